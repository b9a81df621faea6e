// AudioWorklet processor: the microphone's samples as 16-bit PCM frames of a fixed length, posted to the page.
class PcmCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.frameSamples = options.processorOptions.frameSamples;
    this.frame = new Int16Array(this.frameSamples);
    this.filled = 0;
  }

  process(inputs, outputs) {
    const channels = inputs[0];
    if (channels && channels.length) {
      const n = channels[0].length;
      for (let i = 0; i < n; i++) {
        let sum = 0;
        for (const channel of channels) sum += channel[i];
        const sample = Math.max(-1, Math.min(1, sum / channels.length));  // mono: the channels' mean
        this.frame[this.filled++] = Math.round(sample * 32767);
        if (this.filled === this.frameSamples) {
          this.port.postMessage(this.frame.buffer, [this.frame.buffer]);
          this.frame = new Int16Array(this.frameSamples);
          this.filled = 0;
        }
      }
    }
    for (const output of outputs) for (const channel of output) channel.fill(0);  // silent: nothing is played back
    return true;
  }
}

registerProcessor("pcm-capture", PcmCapture);
