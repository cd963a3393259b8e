"""A speech-synthesis sample voice: a small FastPitch and HiFi-GAN built in code with NeMo's exact export signatures
(random, seeded weights), packed as nemo2riva packs them.

    tts_exports(Path("fastpitch.riva"), Path("hifigan.riva"))

- **FastPitch** as nemo2riva exports it (``enable_ragged_batches``, ``enable_volume``): ``text`` int64 ``[N]``,
  ``pitch`` / ``pace`` / ``volume`` float ``[N]``, ``batch_lengths`` int32 ``[B+1]`` → ``spect`` ``[B, 80, T]``,
  ``num_frames`` int64 ``[B]``, ``durs_predicted``, ``log_durs_predicted``, ``pitch_predicted`` ``[B, L]``,
  ``volume_aligned`` ``[B, T]``. Inside: NeMo's ragged batching, a masked convolutional encoder, duration and pitch
  predictors (NeMo's ``exp(d) - 1`` durations, divided by pace, rounded to frames), NeMo's length regulation, a
  masked convolutional decoder. Every convolution sees zeros past a row's end, so a sentence batched gives what it
  gives alone. Its symbol table is NeMo's ``EnglishCharsTokenizer`` (punctuation, apostrophe, padded with spaces).
- **HiFi-GAN**: ``spec`` ``[B, 80, T]`` → ``audio`` ``[B, 1, 256·T]``, upsampling 8·8·2·2 with leaky ReLUs and
  residual convolutions, as NeMo's generator (far smaller).

The weights are random: the audio has the right length and no words. ``--phonemes`` builds the same voice with
NeMo's ``EnglishPhonemesTokenizer`` (ARPAbet, with a CMUdict-format dictionary in the export).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from servicemaker.runtime import tts_text
from servicemaker.samples.export import binary_artifact, nemo_name, text_artifact, write_export
from servicemaker.samples.models import export_traced

SEED = 20261207
SAMPLE_RATE = 22050
N_MELS = 80
HOP = 256
UPSAMPLE = (8, 8, 2, 2)
CHANNELS = 64
TOKENIZER = {"_target_": "nemo.collections.common.tokenizers.text_to_speech.tts_tokenizers.EnglishCharsTokenizer",
             "punct": True, "apostrophe": True, "pad_with_space": True}
ARPABET = {"_target_": "nemo.collections.common.tokenizers.text_to_speech.tts_tokenizers.EnglishPhonemesTokenizer",
           "punct": True, "stresses": True, "chars": True, "apostrophe": True, "pad_with_space": True,
           "g2p": {"_target_": "nemo.collections.tts.g2p.models.en_us_arpabet.EnglishG2p",
                   "phoneme_dict": None, "heteronyms": None, "phoneme_probability": 0.5}}
#: a small ARPAbet dictionary for the phoneme voice (written for this sample)
PHONES = {"HELLO": "HH AH0 L OW1", "WORLD": "W ER1 L D", "THIS": "DH IH1 S", "IS": "IH1 Z", "A": "AH0",
          "TEST": "T EH1 S T", "OF": "AH1 V", "SPEECH": "S P IY1 CH", "SYNTHESIS": "S IH1 N TH AH0 S IH0 S",
          "THE": "DH AH0", "VOICE": "V OY1 S", "SPEAKS": "S P IY1 K S", "TODAY": "T AH0 D EY1"}


def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x * mask


class SampleFastPitch(nn.Module):
    """NeMo FastPitch's export interface over a small, leak-free convolutional network."""

    def __init__(self, symbols: int, dim: int = 64, max_duration: float = 75.0, speakers: int = 1,
                 layers: int = 3) -> None:
        super().__init__()
        self.speaker_emb = nn.Embedding(speakers, dim) if speakers > 1 else None
        self.pad = symbols - 1  # replaced by the tokenizer's <pad> in tts_exports
        self.embed = nn.Embedding(symbols, dim)
        self.encoder = nn.ModuleList(nn.Conv1d(dim, dim, 5, padding=2) for _ in range(layers))
        self.duration = nn.ModuleList([nn.Conv1d(dim, dim, 3, padding=1), nn.Conv1d(dim, 1, 1)])
        self.pitch = nn.ModuleList([nn.Conv1d(dim, dim, 3, padding=1), nn.Conv1d(dim, 1, 1)])
        self.pitch_emb = nn.Conv1d(1, dim, 3, padding=1)
        self.decoder = nn.ModuleList(nn.Conv1d(dim, dim, 5, padding=2) for _ in range(layers))
        self.proj = nn.Conv1d(dim, N_MELS, 1)
        self.max_duration = max_duration

    def _stack(self, layers: nn.ModuleList, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for conv in layers:
            x = _masked(torch.relu(conv(x)) + x, mask)
        return x

    def forward(self, text, pitch, pace, volume, batch_lengths, speaker=None):
        # NeMo's batch_from_ragged, without a loop: [N] values → [B, L] rows, padded
        starts = batch_lengths[:-1].to(torch.int64)
        lengths = batch_lengths[1:].to(torch.int64) - starts
        width = lengths.max()
        steps = torch.arange(width, device=text.device)
        valid = steps[None, :] < lengths[:, None]
        index = torch.where(valid, starts[:, None] + steps[None, :], torch.zeros_like(starts[:, None]))
        tokens = torch.where(valid, text[index], torch.full_like(index, self.pad))
        pitch_in = torch.where(valid, pitch[index], torch.zeros_like(pitch[index]))
        pace_in = torch.where(valid, pace[index], torch.ones_like(pace[index]))
        volume_in = torch.where(valid, volume[index], torch.ones_like(volume[index]))
        mask = valid.to(torch.float32)[:, None, :]                                 # [B, 1, L]

        x = self.embed(tokens).transpose(1, 2)                                     # [B, D, L]
        if self.speaker_emb is not None:  # NeMo adds the speaker's embedding to the symbols'
            x = x + self.speaker_emb(speaker.to(torch.int64))[:, :, None]
        x = _masked(x, mask)
        x = self._stack(self.encoder, x, mask)
        log_durs = (self.duration[1](_masked(torch.relu(self.duration[0](x)), mask)) * mask)[:, 0]
        durs = torch.clamp(torch.exp(log_durs) - 1.0, 0.0, self.max_duration) * valid.to(torch.float32)
        pitch_pred = (self.pitch[1](_masked(torch.relu(self.pitch[0](x)), mask)) * mask)[:, 0] + pitch_in
        x = x + _masked(self.pitch_emb(_masked(pitch_pred[:, None, :], mask)), mask)

        # NeMo's regulate_len: each symbol repeated floor(duration / pace + 0.5) frames
        reps = torch.floor(durs / pace_in + 0.5).to(torch.int64) * valid.to(torch.int64)
        frames = reps.sum(dim=1)
        ends = torch.cumsum(reps, dim=1)
        starts_f = ends - reps
        t = torch.arange(frames.max(), device=text.device)[None, :, None]          # [1, T, 1]
        pick = ((starts_f[:, None, :] <= t) & (ends[:, None, :] > t)).to(torch.float32)   # [B, T, L]
        y = torch.matmul(pick, x.transpose(1, 2)).transpose(1, 2)                   # [B, D, T]
        fmask = (t[:, :, 0] < frames[:, None]).to(torch.float32)[:, None, :]        # [B, 1, T]
        y = self._stack(self.decoder, _masked(y, fmask), fmask)
        spect = _masked(self.proj(y), fmask)
        volume_aligned = torch.matmul(pick, volume_in[:, :, None])[:, :, 0]
        return spect, frames, durs, log_durs, pitch_pred, volume_aligned


class _ResBlock(nn.Module):
    """HiFi-GAN's residual block: dilated convolutions (1, 3, 5), each followed by a plain one."""

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.dilated = nn.ModuleList(nn.Conv1d(channels, channels, kernel, dilation=d, padding=d * (kernel - 1) // 2)
                                     for d in (1, 3, 5))
        self.plain = nn.ModuleList(nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2) for _ in range(3))

    def forward(self, x):
        for a, b in zip(self.dilated, self.plain):
            x = x + b(nn.functional.leaky_relu(a(nn.functional.leaky_relu(x, 0.1)), 0.1))
        return x


class SampleHifiGan(nn.Module):
    """HiFi-GAN's generator shape: upsampling transposed convolutions, leaky ReLUs, residual convolutions, tanh;
    ``full``: its multi-receptive-field blocks (kernels 3, 7, 11, as HiFi-GAN V1/V2), else one convolution each."""

    def __init__(self, channels: int = CHANNELS, full: bool = False) -> None:
        super().__init__()
        self.pre = nn.Conv1d(N_MELS, channels, 7, padding=3)
        ups, res, ch = [], [], channels
        for rate in UPSAMPLE:
            ups.append(nn.ConvTranspose1d(ch, ch // 2, 2 * rate, stride=rate, padding=rate // 2))
            ch //= 2
            res.append(nn.ModuleList(_ResBlock(ch, k) for k in (3, 7, 11)) if full else
                       nn.ModuleList([nn.Conv1d(ch, ch, 3, padding=1)]))
        self.ups, self.res = nn.ModuleList(ups), nn.ModuleList(res)
        self.full = full
        self.post = nn.Conv1d(ch, 1, 7, padding=3)

    def forward(self, spec):
        x = self.pre(spec)
        for up, blocks in zip(self.ups, self.res):
            x = up(nn.functional.leaky_relu(x, 0.1))
            if self.full:
                x = sum(block(x) for block in blocks) / len(blocks)
            else:
                x = x + blocks[0](nn.functional.leaky_relu(x, 0.1))
        return torch.tanh(self.post(nn.functional.leaky_relu(x, 0.01)))


def fastpitch_config(tokenizer: dict[str, Any], speakers: int = 1) -> dict[str, Any]:
    """The model_config.yaml of the sample FastPitch, in NeMo's layout (as nemo2riva writes it)."""
    return {"sample_rate": SAMPLE_RATE, "n_mel_channels": N_MELS, "n_window_size": 1024, "n_window_stride": HOP,
            "n_fft": 1024, "lowfreq": 0, "highfreq": 8000, "window": "hann", "pitch_mean": 212.35,
            "pitch_std": 68.52, "n_speakers": speakers, "max_token_duration": 75, "text_tokenizer": tokenizer,
            "export_config": {"enable_volume": True, "enable_ragged_batches": True}}


def hifigan_config() -> dict[str, Any]:
    return {"preprocessor": {"_target_": "nemo.collections.asr.parts.preprocessing.features.FilterbankFeatures",
                             "nfilt": N_MELS, "lowfreq": 0, "highfreq": 8000, "n_fft": 1024, "n_window_size": 1024,
                             "n_window_stride": HOP, "pad_to": 0, "pad_value": -11.52, "sample_rate": SAMPLE_RATE,
                             "window": "hann", "normalize": None, "preemph": None, "dither": 0.0,
                             "frame_splicing": 1, "log": True, "log_zero_guard_type": "clamp",
                             "log_zero_guard_value": 1e-05, "mag_power": 1.0, "exact_pad": True},
            "generator": {"_target_": "nemo.collections.tts.modules.hifigan_modules.Generator",
                          "upsample_rates": list(UPSAMPLE), "upsample_initial_channel": CHANNELS}}


#: network sizes: the sample (fast, for tests and the demo) and one the size of NeMo's production voices' compute
#: (FastPitch's hidden 384, six layers each side; HiFi-GAN V2's 128 channels and full residual blocks), for timing
SIZES = {"sample": {"dim": 64, "layers": 3, "channels": CHANNELS, "full": False},
         "production": {"dim": 384, "layers": 6, "channels": 128, "full": True}}


def tts_exports(fastpitch_out: str | Path, hifigan_out: str | Path, *, phonemes: bool = False, speakers: int = 1,
                size: str = "sample", **write_kw: Any) -> tuple[Path, Path]:
    """The sample voice: ``fastpitch.riva`` (graph, model config, nemo2riva's mapping.txt, the phone dictionary
    for ``phonemes``; a ``speaker`` input for ``speakers`` > 1) and ``hifigan.riva``; ``size`` from
    :data:`SIZES`."""
    dims = SIZES[size]
    config = dict(ARPABET if phonemes else TOKENIZER)
    artifacts = []
    phone_file = None
    if phonemes:
        text = "".join(f"{w}  {p}\n" for w, p in sorted(PHONES.items()))
        name = nemo_name(text.encode(), "phones.cmudict")
        artifacts.append(text_artifact(name, text, "phone dictionary"))
        config["g2p"] = {**config["g2p"], "phoneme_dict": f"nemo:{name}"}
        del config["g2p"]["heteronyms"]
        phone_file = text
    tokenizer = _tokenizer(config, phone_file)
    torch.manual_seed(SEED)
    fastpitch = SampleFastPitch(len(tokenizer.tokens), dim=dims["dim"], speakers=speakers, layers=dims["layers"])
    fastpitch.pad = tokenizer.pad
    with torch.no_grad():  # about 7 frames a symbol (12 characters a second): speech-like lengths from random weights
        fastpitch.duration[1].weight.mul_(0.2)
        fastpitch.duration[1].bias.fill_(2.08)
    example: tuple = (torch.tensor([3, 4, 5, 6, 7, 8], dtype=torch.int64), torch.zeros(6), torch.ones(6),
                      torch.ones(6), torch.tensor([0, 2, 6], dtype=torch.int32))
    names = ["text", "pitch", "pace", "volume", "batch_lengths"]
    axes = {"speaker": {0: "batch"}} if speakers > 1 else {}
    if speakers > 1:
        example, names = example + (torch.tensor([0, 1], dtype=torch.int64),), names + ["speaker"]
    fp_graph = export_traced(fastpitch, example, names,
                     ["spect", "num_frames", "durs_predicted", "log_durs_predicted", "pitch_predicted",
                      "volume_aligned"],
                     {"text": {0: "symbols"}, "pitch": {0: "symbols"}, "pace": {0: "symbols"},
                      "volume": {0: "symbols"}, "batch_lengths": {0: "batch_plus_1"},
                      "spect": {0: "batch", 2: "frames"}, "num_frames": {0: "batch"},
                      "durs_predicted": {0: "batch", 1: "length"}, "log_durs_predicted": {0: "batch", 1: "length"},
                      "pitch_predicted": {0: "batch", 1: "length"}, "volume_aligned": {0: "batch", 1: "frames"},
                      **axes})
    torch.manual_seed(SEED + 1)
    hg_graph = export_traced(SampleHifiGan(dims["channels"], dims["full"]), (torch.randn(1, N_MELS, 10),), ["spec"], ["audio"],
                     {"spec": {0: "batch", 2: "frames"}, "audio": {0: "batch", 2: "samples"}})
    mapping = text_artifact("mapping.txt", "\n".join(tts_text.mapping_lines(tokenizer)), "mapping file")
    mapping.props.update(path_type="TAR_PATH", nemo_artifact=True)
    a = write_export(fastpitch_out, "nemo.collections.tts.models.FastPitchModel",
                     [binary_artifact("model_graph.onnx", fp_graph, "FastPitch (ragged batches, volume)", onnx=True),
                      text_artifact("model_config.yaml", yaml.safe_dump(fastpitch_config(config, speakers),
                                                                        sort_keys=False), "model config"),
                      mapping] + artifacts, **write_kw)
    b = write_export(hifigan_out, "nemo.collections.tts.models.HifiGanModel",
                     [binary_artifact("model_graph.onnx", hg_graph, "HiFi-GAN", onnx=True),
                      text_artifact("model_config.yaml", yaml.safe_dump(hifigan_config(), sort_keys=False),
                                    "model config")], **write_kw)
    return a, b


def _tokenizer(config: dict[str, Any], phone_text: str | None) -> Any:
    if phone_text is None:
        return tts_text.from_config(config)
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".cmudict", delete=False, encoding="latin-1") as f:
        f.write(phone_text)
    try:
        return tts_text.from_config(config, f.name)
    finally:
        Path(f.name).unlink()
