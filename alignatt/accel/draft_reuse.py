"""Draft reuse, fewer forward passes for the translator's calls: a call's first tokens are proposed from earlier
calls and verified together with the prompt in one forward pass.

On CPU a forward pass of a small translator costs about the same for one token as for a dozen (its weights are
read once either way), and consecutive calls of a talk say much the same thing: the draft of step t+1 starts where
the draft of step t started, and a final pass repeats the last draft. So each call looks up the longest recent
n-gram that ends its prompt in the sequences earlier calls fed and generated, and proposes what followed it. One
pass over the new prompt tokens plus the proposal gives the greedy token at every proposed position; the tokens
agree with the proposal up to some point, and the greedy token after that point comes for free. generate() then
continues from there on the same cache, as if it had produced those tokens itself. Where the screened head serves
(`alignatt.accel.screened_head`), the pass's head is computed one row at a time through it, and no further than the first row
that departs from the proposal; elsewhere the full head computes every row at once.

The tokens are generate()'s own, up to rounding: a pass over several positions sums in another order than one
token at a time, which can flip a greedy choice or a gate verdict that sits within rounding of a tie.
"""
from __future__ import annotations

import contextlib
from collections import deque
from typing import Iterable, Iterator, Sequence

import torch
from torch import nn
from transformers import GenerationConfig, StoppingCriteriaList

from alignatt.accel.screened_head import (InstalledHead, RowScores, ScreenedHead, greedy_processors,
                                          merged_generation_config)
from alignatt.mt.decoding import PassForward, Request, stop_within

MAX_NGRAM = 4  # the longest prompt tail matched (a simulation on the demo talk: 4 and 8 proposal tokens tie)
HISTORY_CALLS = 8  # sequences of earlier calls searched, the latest first


class NgramProposer:
    """Proposes a call's first tokens from what followed its prompt's last tokens in earlier calls."""

    def __init__(self, history_calls: int = HISTORY_CALLS, max_ngram: int = MAX_NGRAM):
        self.sequences: deque[tuple[int, ...]] = deque(maxlen=history_calls)
        self.max_ngram = max_ngram

    def remember(self, token_ids: Sequence[int]) -> None:
        """A call's prompt and generated tokens."""
        self.sequences.append(tuple(token_ids))

    def propose(self, prompt: Sequence[int], n_tokens: int) -> list[int]:
        """Up to `n_tokens` that followed the longest (then latest) match of the prompt's last 1..max_ngram tokens."""
        for n in range(min(self.max_ngram, len(prompt)), 0, -1):
            tail = tuple(prompt[-n:])
            for sequence in reversed(self.sequences):
                for start in range(len(sequence) - n - 1, -1, -1):
                    if sequence[start:start + n] == tail:
                        return list(sequence[start + n:start + n + n_tokens])
        return []


class ColumnHead(nn.Module):
    """The model's lm_head computed as weight @ hidden^T: for a few rows of a 262k-token head on CPU, about twice
    as fast as the kernel nn.Linear picks (59 against 132 ms for 5 rows of Gemma-3's fp32 head on 2 AMD cores);
    the same products, summed in another order."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.reshape(-1, hidden.shape[-1])
        logits = (self.weight @ rows.T).T
        if self.bias is not None:
            logits = logits + self.bias
        return logits.reshape(*hidden.shape[:-1], logits.shape[-1])


@contextlib.contextmanager
def head_by_columns(model):
    """The model's plain linear lm_head computed by `ColumnHead` inside the block (other heads unchanged)."""
    original = getattr(model, "lm_head", None)
    with InstalledHead(model, ColumnHead(original)) if type(original) is nn.Linear else contextlib.nullcontext():
        yield


@contextlib.contextmanager
def head_tapped(model):
    """A `HiddenTap` in place of the model's lm_head inside the block."""
    tap = HiddenTap()
    with InstalledHead(model, tap):
        yield tap


class HiddenTap(nn.Module):
    """Stands in for the lm_head during a pass whose head the caller computes row by row: keeps the hidden rows the
    head would have received and returns no logits."""

    def __init__(self):
        super().__init__()
        self.hidden: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        self.hidden = hidden
        return hidden[..., :0]


def processed_rows(logits: torch.Tensor, generation: GenerationConfig, n_prompt_tokens: int) -> RowScores:
    """Rows of full logits with the processors generate() applies to a config the screened head accepts
    (`ScreenedHead.applies`): the repetition penalty over every earlier token, and the suppression of
    `begin_suppress_tokens` at the first generated token (row 0, after the `n_prompt_tokens` of the prompt)."""
    processors = greedy_processors(generation, n_prompt_tokens)
    return lambda row, context: processors(context, logits[row:row + 1].float())


def greedy_tokens(scores_of: RowScores, n_rows: int, sequence: Sequence[int], device: torch.device | str = "cpu"
                  ) -> Iterator[int]:
    """The greedy token at each of the last `n_rows` positions of `sequence`, one row at a time (row r predicts the
    token after position len(sequence) - n_rows + r), so that a caller who stops early computes no more rows."""
    first = len(sequence) - n_rows + 1  # tokens before the first predicted one
    for row in range(n_rows):
        yield int(scores_of(row, torch.tensor([list(sequence[:first + row])], device=device)).argmax(-1))


def accepted_prefix(greedy: Iterable[int], proposal: Sequence[int]) -> list[int]:
    """The greedy tokens through the first one that departs from the proposal (all of them if none does), read no
    further than that."""
    accepted = []
    for token in greedy:
        accepted.append(token)
        if len(accepted) > len(proposal) or token != proposal[len(accepted) - 1]:
            break
    return accepted


class DraftReuse:
    """The static decoder's `DraftVerifier` hook (`alignatt.mt.decoding`): up to `max_tokens` first tokens of each
    call proposed by an `NgramProposer` and verified with the prompt in one pass, through the screened head where it
    serves (`screen`), else through the full fp32 head by columns."""

    def __init__(self, model, max_tokens: int, screen: ScreenedHead | None = None):
        self.model = model
        self.max_tokens = max_tokens
        self.screen = screen
        self.proposer = NgramProposer()

    def remember(self, token_ids: Sequence[int]) -> None:
        self.proposer.remember(token_ids)

    def verify(self, request: Request, forward: PassForward, criteria: StoppingCriteriaList
               ) -> tuple[list[int], bool]:
        """The call's first tokens, verified with the prompt in one pass (none when nothing is proposed or generate()
        would apply other processors than the two `processed_rows` applies), and whether generate() would have
        stopped within them."""
        if set(request.generate_kwargs) - {"stopping_criteria"}:
            return [], False
        merged = merged_generation_config(self.model, request.generation)
        if merged is None or not ScreenedHead.applies(merged):
            return [], False
        input_ids = list(request.input_ids)
        proposal = self.proposer.propose(input_ids, min(self.max_tokens, merged.max_new_tokens - 1))
        if not proposal:
            return [], False
        sequence, n_rows = input_ids + proposal, len(proposal) + 1
        scores_of = self._row_scores(forward, sequence, n_rows, merged, len(input_ids))
        accepted = accepted_prefix(greedy_tokens(scores_of, n_rows, sequence, self.model.device), proposal)
        return stop_within(accepted, input_ids, merged, criteria)

    def _row_scores(self, forward: PassForward, sequence: list[int], n_rows: int, merged: GenerationConfig,
                    n_prompt_tokens: int) -> RowScores:
        """One forward pass (`forward`, as generate()'s prefill runs it) and the processed scores of its last
        `n_rows` positions: from the screened head where it serves (the full head's greedy tokens at about half its
        cost per row on CPU, and each row only when asked for), else from the full fp32 head, all rows at once."""
        if self.screen is not None and self.screen.ready():
            with head_tapped(self.model) as tap:
                forward(sequence, n_rows)
            return self.screen.processed_rows(tap.hidden[0, -n_rows:], merged, n_prompt_tokens)
        with head_by_columns(self.model):
            logits = forward(sequence, n_rows).logits[0, -n_rows:]
        return processed_rows(logits, merged, n_prompt_tokens)
