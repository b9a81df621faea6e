"""AudioBuffer: input normalisation, streaming resampling, amortised growth, time-addressed views."""
import logging
import math

import numpy as np
import pytest
from scipy.signal import resample_poly

from alignatt.audio import SAMPLE_RATE_HZ, AudioBuffer, StreamResampler, to_float32_mono


def feed_in_random_chunks(buffer: AudioBuffer, samples: np.ndarray, rate_hz: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    position = 0
    while position < len(samples):
        size = int(rng.integers(1, rate_hz // 4))
        buffer.append(samples[position: position + size], rate_hz)
        position += size


def test_float32_mono_is_stored_as_is_and_viewed_by_time():
    audio = np.arange(3 * SAMPLE_RATE_HZ, dtype=np.float32) / 1e6
    buffer = AudioBuffer(initial_capacity_s=1.0)
    assert buffer.append(audio) == len(audio)
    assert buffer.duration_s == pytest.approx(3.0)
    window = buffer.view(1.0, 2.0)
    assert len(window) == SAMPLE_RATE_HZ
    assert window[0] == audio[SAMPLE_RATE_HZ]
    np.testing.assert_array_equal(buffer.view(0.0), audio)


def test_view_is_read_only_no_copy_and_survives_growth():
    buffer = AudioBuffer(initial_capacity_s=0.5)
    buffer.append(np.full(SAMPLE_RATE_HZ // 2, 0.25, dtype=np.float32))
    window = buffer.view(0.0, 0.25)
    assert window.base is not None  # a view, not a copy
    with pytest.raises(ValueError):
        window[0] = 1.0
    buffer.append(np.full(10 * SAMPLE_RATE_HZ, -0.5, dtype=np.float32))  # forces reallocation
    assert np.all(window == 0.25)
    assert np.all(buffer.view(0.5, 1.0) == -0.5)


def test_view_clamps_out_of_range_times():
    buffer = AudioBuffer()
    buffer.append(np.ones(SAMPLE_RATE_HZ, dtype=np.float32))
    assert len(buffer.view(-5.0, 100.0)) == SAMPLE_RATE_HZ
    assert len(buffer.view(2.0)) == 0
    assert len(buffer.view(0.8, 0.2)) == 0
    assert buffer.sample_index(0.5) == SAMPLE_RATE_HZ // 2


def test_int16_pcm_is_scaled_to_unit_range():
    pcm = np.array([-32768, 0, 16384, 32767], dtype=np.int16)
    np.testing.assert_allclose(to_float32_mono(pcm), [-1.0, 0.0, 0.5, 32767 / 32768], rtol=0, atol=1e-7)
    assert to_float32_mono(pcm).dtype == np.float32


def test_float64_and_python_lists_become_float32():
    assert to_float32_mono(np.array([0.5, -0.5])).dtype == np.float32
    np.testing.assert_array_equal(to_float32_mono([0.25, -0.25]), np.array([0.25, -0.25], dtype=np.float32))


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.bool_, np.complex64])
def test_other_dtypes_are_rejected(dtype):
    with pytest.raises(TypeError, match="unsupported audio dtype"):
        AudioBuffer().append(np.zeros(10, dtype=dtype))


def test_stereo_is_downmixed_with_one_warning(caplog):
    frames = np.stack([np.full(100, 0.5), np.full(100, -0.1)], axis=1).astype(np.float32)  # (frames, channels)
    buffer = AudioBuffer()
    with caplog.at_level(logging.WARNING, logger="alignatt.audio"):
        buffer.append(frames)
        buffer.append(frames)
    np.testing.assert_allclose(buffer.view(0.0), 0.2, atol=1e-7)
    assert buffer.num_samples == 200
    assert sum("downmixing" in record.message for record in caplog.records) == 1


def test_int16_stereo_is_scaled_then_averaged():
    frames = np.array([[32767, 32767], [-32768, 0]], dtype=np.int16)
    np.testing.assert_allclose(to_float32_mono(frames), [32767 / 32768, -0.5], atol=1e-7)


def test_channels_first_layout_and_higher_ranks_are_rejected(caplog):
    with caplog.at_level(logging.WARNING, logger="alignatt.audio"), pytest.raises(ValueError, match="frames, channels"):
        AudioBuffer().append(np.zeros((2, 13600), dtype=np.float32))
    assert not any("downmixing" in record.message for record in caplog.records)  # rejected, not "13600 channels"
    with pytest.raises(ValueError, match="1-D"):
        AudioBuffer().append(np.zeros((2, 2, 2), dtype=np.float32))


def test_non_finite_samples_become_zero_with_one_warning_per_talk(caplog):
    chunk = np.array([0.1, np.nan, np.inf, -np.inf, 0.2], dtype=np.float32)
    buffer = AudioBuffer()
    with caplog.at_level(logging.WARNING, logger="alignatt.audio"):
        for _ in range(50):
            buffer.append(chunk)
    np.testing.assert_array_equal(buffer.view(0.0)[:5], np.array([0.1, 0, 0, 0, 0.2], dtype=np.float32))
    assert sum("non-finite" in record.message for record in caplog.records) == 1


def test_samples_beyond_full_scale_are_clipped_with_one_warning(caplog):
    buffer = AudioBuffer()
    with caplog.at_level(logging.WARNING, logger="alignatt.audio"):
        for _ in range(10):
            buffer.append(np.array([1000.0, -3.0, 0.5], dtype=np.float32))
    np.testing.assert_array_equal(buffer.view(0.0)[:3], np.array([1.0, -1.0, 0.5], dtype=np.float32))
    assert sum("clipping" in record.message for record in caplog.records) == 1


def test_empty_chunks_are_no_ops():
    buffer = AudioBuffer()
    assert buffer.append(np.zeros(0, dtype=np.float32)) == 0
    assert buffer.append([]) == 0
    assert buffer.append(np.zeros((0, 2), dtype=np.int16), 44_100) == 0
    assert buffer.num_samples == 0
    # An empty chunk does not fix the sample rate either.
    buffer.append(np.ones(10, dtype=np.float32), 16_000)
    assert buffer.num_samples == 10


@pytest.mark.parametrize("rate_hz", [8_000, 44_100])
def test_resampled_stream_equals_whole_signal_resampling(rate_hz):
    t = np.arange(3 * rate_hz) / rate_hz
    signal = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.sin(2 * np.pi * 1234 * t)).astype(np.float32)
    buffer = AudioBuffer(initial_capacity_s=0.2)
    feed_in_random_chunks(buffer, signal, rate_hz)
    buffer.finish()
    expected = resample_poly(signal, SAMPLE_RATE_HZ, rate_hz)
    assert buffer.num_samples == math.ceil(len(signal) * SAMPLE_RATE_HZ / rate_hz) == len(expected)
    np.testing.assert_allclose(buffer.view(0.0), expected, atol=1e-5)
    assert buffer.duration_s == pytest.approx(3.0)


def test_resampling_holds_back_under_a_millisecond():
    buffer = AudioBuffer()
    chunk = np.zeros(int(0.85 * 44_100), dtype=np.float32)  # 850 ms chunks at 44.1 kHz
    for index in range(1, 11):
        buffer.append(chunk, 44_100)
        assert 0 <= index * 0.85 - buffer.duration_s < 0.001


def test_sample_rate_change_mid_stream_is_an_error():
    buffer = AudioBuffer()
    buffer.append(np.zeros(100, dtype=np.float32), 8_000)
    with pytest.raises(ValueError, match="changed mid-stream"):
        buffer.append(np.zeros(100, dtype=np.float32), 16_000)
    with pytest.raises(ValueError, match="positive"):
        AudioBuffer().append(np.zeros(10, dtype=np.float32), 0)


def test_long_feed_grows_geometrically():
    buffer = AudioBuffer(initial_capacity_s=1.0)
    chunk_samples = SAMPLE_RATE_HZ // 100  # 10 ms chunks, 200 s of audio
    capacities = {buffer.capacity_samples}
    for index in range(20_000):
        buffer.append(np.full(chunk_samples, index % 7, dtype=np.float32) / 10)
        capacities.add(buffer.capacity_samples)
    assert buffer.duration_s == pytest.approx(200.0)
    # Doubling from 1 s to >= 200 s takes 8 reallocations; a per-chunk copy would take 20 000.
    assert len(capacities) <= 9
    assert buffer.capacity_samples <= 2 * buffer.num_samples
    window = buffer.view(150.0, 150.01)
    assert np.all(window == np.float32(15_000 % 7) / 10)


def test_stream_resampler_identity_ratio_is_exact():
    resampler = StreamResampler(16_000, 16_000)
    data = np.linspace(-1, 1, 1000, dtype=np.float32)
    out = np.concatenate([resampler.process(data[:300]), resampler.process(data[300:]), resampler.flush()])
    np.testing.assert_allclose(out, data, atol=1e-6)


def test_discard_keeps_absolute_time():
    buffer = AudioBuffer(initial_capacity_s=1.0)
    ramp = np.arange(10 * SAMPLE_RATE_HZ, dtype=np.float32) / 2**18  # exact in float32, within full scale
    buffer.append(ramp)
    buffer.discard_before(8.0)  # releases 8 s, keeps 2 s
    assert buffer.held_samples == 2 * SAMPLE_RATE_HZ and buffer.duration_s == 10.0
    assert np.array_equal(buffer.view(8.5, 9.0), ramp[int(8.5 * SAMPLE_RATE_HZ):9 * SAMPLE_RATE_HZ])
    assert buffer.view(1.0, 8.0).size == 0 and buffer.view(0.0)[0] == ramp[8 * SAMPLE_RATE_HZ]
    buffer.append(ramp[:SAMPLE_RATE_HZ])
    assert buffer.duration_s == 11.0 and buffer.view(10.0)[5] == ramp[5]


def test_discard_defers_small_releases():
    buffer = AudioBuffer()
    buffer.append(np.ones(10 * SAMPLE_RATE_HZ, dtype=np.float32))
    buffer.discard_before(2.0)  # releasing less than is kept would copy for little gain
    assert buffer.held_samples == 10 * SAMPLE_RATE_HZ
    assert buffer.view(1.0).size == 9 * SAMPLE_RATE_HZ
