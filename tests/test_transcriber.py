"""IncrementalTranscriber commit logic on scripted hypotheses (fake ASR backends, no models)."""
import numpy as np
import pytest

from alignatt.asr.base import AsrBackend, Word
from alignatt.audio import SAMPLE_RATE_HZ, AudioBuffer
from alignatt.stream.source import SourceOptions, SourceState
from alignatt.stream.transcriber import (
    IncrementalTranscriber,
    TranscriberOptions,
    agreed_prefix_len,
    aligned_stable_len,
    split_sentences,
)
from alignatt.text_units import is_sentence_end


def words(text: str, start_s: float = 0.0, step_s: float = 0.5) -> list[Word]:
    """Words of `text`, one every `step_s`, each lasting 0.4 s."""
    return [Word(token, start_s + i * step_s, start_s + i * step_s + 0.4) for i, token in enumerate(text.split())]


class ScriptedBackend(AsrBackend):
    """Returns the next scripted hypothesis per call and records what it was given."""

    def __init__(self, hypotheses: list[list[Word]]):
        self.hypotheses = list(hypotheses)
        self.calls: list[tuple[float, float]] = []  # (offset_s, window duration in s)

    def transcribe(self, audio, offset_s):
        self.calls.append((offset_s, len(audio) / SAMPLE_RATE_HZ))
        return self.hypotheses.pop(0) if self.hypotheses else []


class TalkBackend(AsrBackend):
    """A perfect ASR over a scripted talk: returns the talk's words fully inside the window.

    Like a real backend it works in window-relative time and adds offset_s, so a transcriber that passed the
    wrong offset would get the wrong words and the wrong times.
    """

    def __init__(self, talk: list[Word]):
        self.talk = talk
        self.windows_s: list[float] = []

    def transcribe(self, audio, offset_s):
        duration_s = len(audio) / SAMPLE_RATE_HZ
        self.windows_s.append(duration_s)
        relative = [(w.text, w.start_s - offset_s, w.end_s - offset_s) for w in self.talk]
        inside = [(t, s, e) for t, s, e in relative if s >= -1e-6 and e <= duration_s + 1e-6]
        return [Word(t, s + offset_s, e + offset_s) for t, s, e in inside]


def grow(buffer: AudioBuffer, until_s: float) -> None:
    buffer.append(np.zeros(round(until_s * SAMPLE_RATE_HZ) - buffer.num_samples, dtype=np.float32))


def run_updates(transcriber, buffer, times_s):
    updates = []
    for time_s in times_s:
        grow(buffer, time_s)
        updates.append(transcriber.update(buffer))
    return updates


def committed_texts(updates):
    return [sentence.text for update in updates for sentence in update.committed]


def test_sentence_end_detection():
    assert is_sentence_end("world.") and is_sentence_end("why?") and is_sentence_end('"stop!"')
    assert is_sentence_end("好。") and is_sentence_end("吗？") and is_sentence_end("啊！")
    assert not is_sentence_end("world,") and not is_sentence_end("well...") and not is_sentence_end("so…")
    assert not is_sentence_end("Mr.") and not is_sentence_end("e.g.")


def test_agreement_ignores_case_and_punctuation():
    assert agreed_prefix_len(words("Hello, world. How"), words("hello world. how are")) == 3
    assert agreed_prefix_len(words("Hello world"), words("Hello word")) == 1


def test_commit_needs_two_agreeing_hypotheses_through_final_punctuation():
    backend = ScriptedBackend([
        words("Hello world."),
        words("Hello, word."),  # flicker on the second word
        words("Hello world. How"),
        words("hello world. How are"),
        words("How are you"),
    ])
    transcriber = IncrementalTranscriber(backend)
    buffer = AudioBuffer()
    updates = run_updates(transcriber, buffer, [1.0, 1.5, 2.0, 2.5, 3.0])
    assert [len(u.committed) for u in updates] == [0, 0, 0, 1, 0]
    sentence = updates[3].committed[0]
    assert sentence.text == "hello world." and sentence.reason == "agreed"  # latest hypothesis's text
    assert [w.text for w in updates[3].tail] == ["How", "are"]
    assert updates[3].boundary_s == pytest.approx(0.9)
    # The next window starts at the committed word's end, in absolute time.
    assert backend.calls[4][0] == pytest.approx(0.9)
    assert backend.calls[4][1] == pytest.approx(3.0 - 0.9)


def test_shrinking_and_empty_hypotheses_do_not_commit():
    backend = ScriptedBackend([
        words("The cat sat on the mat. It"),
        words("The cat sat."),  # the model dropped most words
        [],  # and then everything
        words("The cat sat on the mat. It was"),
        words("The cat sat on the mat. It was late"),
    ])
    transcriber = IncrementalTranscriber(backend)
    updates = run_updates(transcriber, AudioBuffer(), [1, 2, 3, 4, 5])
    assert committed_texts(updates[:4]) == []
    assert committed_texts(updates) == ["The cat sat on the mat."]
    assert [w.text for w in updates[-1].tail] == ["It", "was", "late"]


def test_several_agreed_sentences_commit_in_one_update():
    backend = ScriptedBackend([words("One. Mr. Two went. Three"), words("One. Mr. Two went. Three four")])
    updates = run_updates(IncrementalTranscriber(backend), AudioBuffer(), [3, 4])
    assert committed_texts(updates) == ["One.", "Mr. Two went."]
    assert updates[1].boundary_s == pytest.approx(words("One. Mr. Two went.")[-1].end_s)


def test_no_punctuation_for_40_s_force_commits_the_agreed_prefix():
    talk = words(" ".join(f"w{i}" for i in range(90)), start_s=0.2)  # 45 s of unpunctuated speech
    backend = TalkBackend(talk)
    transcriber = IncrementalTranscriber(backend, TranscriberOptions(max_open_s=30.0))
    buffer = AudioBuffer()
    updates = run_updates(transcriber, buffer, np.arange(1.0, 46.0, 1.0))
    forced = [(i, s) for i, u in enumerate(updates) for s in u.committed]
    first_index, first = forced[0]
    assert first.reason == "length_guard"
    assert first_index == 30  # the update at 31 s is the first with more than 30 s open
    # The agreed prefix: the words complete by 30 s (w58 ends at 29.6 s, w59 at 30.1 s).
    assert first.text == " ".join(f"w{i}" for i in range(59))
    # Compute stays bounded: no window longer than the guard plus one chunk.
    assert max(backend.windows_s) <= 31.0 + 1e-6
    grow(buffer, 45.5)  # the last word ends at 45.1 s
    buffer.finish()
    final = transcriber.finish(buffer)
    assert all(s.reason == "end_of_stream" for s in final.committed)
    everything = [w.text for _, s in forced for w in s.words] + [w.text for s in final.committed for w in s.words]
    assert everything == [w.text for w in talk]  # nothing lost, nothing twice
    assert final.tail == () and final.boundary_s == pytest.approx(45.5)


def test_force_commit_without_agreement_keeps_the_last_words_open():
    flicker = [words(" ".join(f"v{k}w{i}" for i in range(20)), start_s=1.0, step_s=1.5) for k in range(3)]
    backend = ScriptedBackend(flicker)
    transcriber = IncrementalTranscriber(backend, TranscriberOptions(max_open_s=30.0, force_keep_words=3))
    updates = run_updates(transcriber, AudioBuffer(), [29.0, 32.0])
    (sentence,) = updates[1].committed
    assert sentence.reason == "length_guard" and len(sentence.words) == 17
    assert [w.text for w in updates[1].tail] == ["v1w17", "v1w18", "v1w19"]
    assert transcriber.boundary_s == pytest.approx(sentence.words[-1].end_s)


def test_silence_longer_than_the_guard_drops_old_audio():
    backend = ScriptedBackend([])  # always returns no words
    transcriber = IncrementalTranscriber(backend, TranscriberOptions(max_open_s=30.0, drop_keep_s=5.0))
    updates = run_updates(transcriber, AudioBuffer(), [10, 20, 30, 40, 41])
    assert committed_texts(updates) == []
    assert updates[3].boundary_s == pytest.approx(35.0)
    assert backend.calls[4] == (pytest.approx(35.0), pytest.approx(6.0))


def test_end_of_stream_commits_everything_in_sentences():
    backend = ScriptedBackend([words("First one. Second"), words("First one. Second one? and a tail")])
    transcriber = IncrementalTranscriber(backend)
    buffer = AudioBuffer()
    run_updates(transcriber, buffer, [4.0])
    final = transcriber.finish(buffer)
    assert [s.text for s in final.committed] == ["First one.", "Second one?", "and a tail"]
    assert {s.reason for s in final.committed} == {"end_of_stream"}
    assert final.tail == () and transcriber.boundary_s == pytest.approx(4.0)


def test_split_sentences_keeps_unpunctuated_remainder():
    sentences = split_sentences(words("A b. C d! e"), "end_of_stream")
    assert [s.text for s in sentences] == ["A b.", "C d!", "e"]


def test_second_sentence_times_are_absolute_and_gate_the_frontier():
    # Sentence 1 fills the first 30 s; sentence 2 starts at 30.0 s and its first word ends at 31.0 s.
    first = words(" ".join(["la"] * 59 + ["end."]), start_s=0.0)
    second = [Word("Next", 30.0, 31.0), Word("words", 31.1, 31.6), Word("here", 31.7, 32.2)]
    backend = TalkBackend(first + second)
    transcriber = IncrementalTranscriber(backend)
    source = SourceState(SourceOptions(require_stable=False))  # timing only: the tail was heard once
    buffer = AudioBuffer()
    for time_s in (29.95, 30.0, 32.5):
        grow(buffer, time_s)
        source.apply(transcriber.update(buffer))
    committed = source.pop_committed()
    assert committed is not None and committed.text.endswith("end.")
    assert transcriber.boundary_s == pytest.approx(29.9)
    assert source.open_text == "Next words here"
    assert [u.end_s for u in source.open_sentence.units] == pytest.approx([31.0, 31.6, 32.2])
    # Utterance-relative times (~1.1 s) would make these accessible at 30.5 s; absolute ones must not be.
    assert source.accessible_units(30.5) == 0
    assert source.accessible_units(31.0) == 1
    assert source.accessible_units(32.2) == 3


def test_stable_tail_words_are_those_two_hypotheses_agree_on():
    first = words("we propose a")
    second = words("We propose the new")  # casing differs: still agreed; "a" -> "the" is not
    third = words("we propose the new method. And")  # agrees on 4, commits the sentence, "And" is new
    fourth = words("And then")
    transcriber = IncrementalTranscriber(ScriptedBackend([first, second, third, fourth]))
    buffer = AudioBuffer()
    stable = [u.n_stable_tail_words for u in run_updates(transcriber, buffer, [1.0, 2.0, 3.0, 4.0])]
    assert stable[:2] == [0, 2]
    # "method." was new in the third hypothesis, so nothing commits yet and its 4 first words are stable.
    assert stable[2] == 4
    assert stable[3] == 0  # a fresh hypothesis "And then" vs the previous "... method. And": no shared start


def test_stable_count_after_a_commit_counts_from_the_new_boundary():
    hypotheses = [words("Hello there. We"), words("Hello there. We go"), words("We go on")]
    transcriber = IncrementalTranscriber(ScriptedBackend(hypotheses))
    updates = run_updates(transcriber, AudioBuffer(), [1.0, 2.0, 3.0])
    assert [s.text for s in updates[1].committed] == ["Hello there."]
    assert [w.text for w in updates[1].tail] == ["We", "go"] and updates[1].n_stable_tail_words == 1
    assert updates[2].n_stable_tail_words == 2  # "We go" agreed with the tail left after the commit


def test_aligned_stability_reaches_past_a_rewritten_word():
    before = words("Hi I'm Sarah Pappy from the universe")
    after = words("Hi I'm Sarah Papi from the University of")
    assert agreed_prefix_len(before, after) == 3
    assert aligned_stable_len(before, after) == 6  # through "from the", shared in order after the rewrite
    # A single shared word ("the") after a disagreement is chance, not agreement.
    assert aligned_stable_len(words("we saw the cat"), words("we sat on the mat")) == 1
    assert aligned_stable_len(words("a b"), words("x y")) == 0
    scripted = [words("we saw a big red dog"), words("we sat a big red dog run"), words("we sat a big red dog runs")]
    stable = {}
    for mode in ("prefix", "aligned"):
        transcriber = IncrementalTranscriber(ScriptedBackend(list(scripted)), TranscriberOptions(stable_words=mode))
        stable[mode] = [u.n_stable_tail_words for u in run_updates(transcriber, AudioBuffer(), [1.0, 2.0, 3.0])]
    assert stable == {"prefix": [0, 1, 6], "aligned": [0, 6, 6]}
    with pytest.raises(ValueError, match="stable_words"):
        TranscriberOptions(stable_words="suffix")
