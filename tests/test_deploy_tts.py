"""speech_synthesis through svc-build and svc-deploy without a server: Riva's flags and argument order, the
repository it writes (two ensembles, optional inputs, a decoupled streaming synthesizer, FastPitch's ragged graph
served unbatched), the checks that refuse a voice whose parts do not fit each other (symbol table, mapping.txt, mel
bands, sample rate, speakers), the compile cache for both networks, and the fused layout refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from servicemaker.build import BuildOptions, build
from servicemaker.deploy import DeployOptions, deploy
from servicemaker.errors import UsageError, ValidationError
from servicemaker.keys import ArchiveArg
from servicemaker.samples.export import binary_artifact, text_artifact, write_export
from servicemaker.samples.tts import tts_exports
from tts_fixtures import FIXTURES, nemo_exports

VOICE = "English-US"
MODELS = {f"tts_preprocessor-{VOICE}", f"riva-onnx-fastpitch_encoder-{VOICE}", f"riva-onnx-hifigan-{VOICE}",
          f"tts_synthesizer-{VOICE}", f"tts_synthesizer_streaming-{VOICE}", f"fastpitch_hifigan_ensemble-{VOICE}",
          f"fastpitch_hifigan_ensemble-{VOICE}-streaming"}


def rmir(tmp: Path, inputs: list[Path], **overrides: str) -> Path:
    out = tmp / "tts.rmir"
    build(BuildOptions(pipeline="speech_synthesis", output=ArchiveArg(out, None),
                       inputs=[ArchiveArg(p, None) for p in inputs], overrides=overrides, force=True))
    return out


def deployed(tmp: Path, path: Path, **kw) -> Path:
    repo = tmp / "repo"
    deploy(DeployOptions(rmirs=[ArchiveArg(path, None)], repo=repo, target="onnxruntime-python", **kw))
    return repo


def config(repo: Path, name: str):
    return text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("voice")
    return tts_exports(tmp / "fastpitch.riva", tmp / "hifigan.riva")


@pytest.fixture(scope="module")
def nemo(tmp_path_factory) -> tuple[Path, Path]:
    return nemo_exports(tmp_path_factory.mktemp("nemo"))


def test_riva_flags_name_the_voice(sample, tmp_path):
    path = rmir(tmp_path, list(sample), voice_name="Emma", sample_rate="22050", phone_set="auto")
    repo = deployed(tmp_path, path)
    assert {p.name for p in repo.iterdir() if p.is_dir()} == {m.replace(VOICE, "Emma") for m in MODELS}


def test_the_repository(nemo, tmp_path):
    repo = deployed(tmp_path, rmir(tmp_path, list(nemo)))
    assert {p.name for p in repo.iterdir() if p.is_dir()} == MODELS
    batch, stream = (config(repo, f"fastpitch_hifigan_ensemble-{VOICE}{s}") for s in ("", "-streaming"))
    for ensemble in (batch, stream):
        assert [(t.name, t.optional) for t in ensemble.input] == [("TEXT", False), ("SPEAKER", True),
                                                                   ("PACE", True), ("PITCH_SHIFT", True)]
        assert [t.name for t in ensemble.output] == ["AUDIO", "SAMPLE_RATE"]
    assert [s.model_name for s in stream.ensemble_scheduling.step] == [f"tts_preprocessor-{VOICE}",
                                                                       f"tts_synthesizer_streaming-{VOICE}"]
    assert config(repo, f"tts_synthesizer_streaming-{VOICE}").model_transaction_policy.decoupled
    assert not config(repo, f"tts_synthesizer-{VOICE}").model_transaction_policy.decoupled
    fastpitch = config(repo, f"riva-onnx-fastpitch_encoder-{VOICE}")
    assert fastpitch.max_batch_size == 0 and [list(t.dims) for t in fastpitch.input][:1] == [[-1]]
    assert fastpitch.parameters["handler"].string_value == "onnx_requests"
    hifigan = config(repo, f"riva-onnx-hifigan-{VOICE}")
    assert hifigan.max_batch_size == 8 and list(hifigan.input[0].dims) == [80, -1]
    params = {k: v.string_value for k, v in config(repo, f"tts_synthesizer-{VOICE}").parameters.items()}
    assert json.loads(params["network_models"]) == {
        "spectrogram_generator": {"model": f"riva-onnx-fastpitch_encoder-{VOICE}", "batched": False,
                                  "outputs": ["spect", "num_frames"]},
        "vocoder": {"model": f"riva-onnx-hifigan-{VOICE}", "batched": True, "outputs": ["audio"]}}
    assert params["hop_length"] == "256" and params["sample_rate"] == "22050" and params["sentence_batching"] == "any"
    pre = {k: v.string_value for k, v in config(repo, f"tts_preprocessor-{VOICE}").parameters.items()}
    assert json.loads(pre["text_tokenizer"])["_target_"].endswith("EnglishCharsTokenizer")
    assert (repo / f"tts_preprocessor-{VOICE}" / "1" / "svc_tts_text.py").is_file()
    assert "num2words>=0.5.10" in (repo / "requirements.txt").read_text()
    status = json.loads((repo / "deploy_status.json").read_text())
    report = status["models"][f"riva-onnx-fastpitch_encoder-{VOICE}"]["optimization"]
    assert report["repaired"]["optionals_removed"] > 0
    assert report["padding_leak"] == {"masked_convolutions": 6, "masked_embeddings": 1, "sentence_batching": "any"}
    assert report["accuracy"]["status"] == "passed" and report["accuracy"]["frames_changed"] == 0


def test_nemo_plain_export_is_served_batched(tmp_path):
    fp, hg = nemo_exports(tmp_path / "in", layout="plain")
    repo = deployed(tmp_path, rmir(tmp_path, [fp, hg]))
    fastpitch = config(repo, f"riva-onnx-fastpitch_encoder-{VOICE}")
    assert fastpitch.max_batch_size == 8 and fastpitch.parameters["handler"].string_value == "onnx"
    params = config(repo, f"tts_synthesizer-{VOICE}").parameters
    assert params["spectrogram_layout"].string_value == "padded" and params["symbol_pad"].string_value == "43"


def test_order_and_count_of_inputs(sample, tmp_path):
    fp, hg = sample
    with pytest.raises(ValidationError) as err:
        rmir(tmp_path, [hg, fp])
    assert "takes FastPitchModel, then HifiGanModel, in that order" in err.value.violations[0]
    with pytest.raises(UsageError) as err:
        rmir(tmp_path, [fp])
    assert "takes 2 input model(s) (FastPitchModel + HifiGanModel); 1 given" in str(err.value)
    assert err.value.hint == "svc-build speech_synthesis OUT.rmir SPECTROGRAM_GENERATOR.riva VOCODER.riva"
    with pytest.raises(ValidationError) as err:
        rmir(tmp_path, [fp, fp])
    assert "is a FastPitchModel; pipeline speech_synthesis takes HifiGanModel" in " ".join(err.value.violations)
    assert not (tmp_path / "tts.rmir").exists()


@pytest.mark.parametrize("flag,value,message", [
    ("phone_set", "ipa", "--phone_set=ipa but the model's tokenizer uses none (characters)"),
    ("subvoices", "Female-1:0,Male-1:4", "--subvoices Male-1 has speaker id 4, but the model has 1 speaker(s)"),
    ("subvoices", "Female-1", "--subvoices item 'Female-1' is not NAME:ID"),
    ("sample_rate", "16000", "FastPitch was trained at 22050 Hz but the vocoder's sample rate is 16000 Hz"),
])
def test_flags_that_do_not_fit_the_voice_are_refused_at_build(sample, tmp_path, flag, value, message):
    with pytest.raises(ValidationError) as err:
        rmir(tmp_path, list(sample), **{flag: value})
    assert message in err.value.violations, err.value.violations
    assert not (tmp_path / "tts.rmir").exists()


def test_speakers_the_graph_does_not_have_are_refused_at_deploy(sample, tmp_path):
    path = rmir(tmp_path, list(sample), num_speakers="2")  # the graph is read at svc-deploy
    with pytest.raises(ValidationError) as err:
        deployed(tmp_path, path)
    assert "--num_speakers=2 but the graph has no speaker input" in err.value.violations
    assert not (tmp_path / "repo").exists()


def _fastpitch(tmp: Path, *, config_edit=None, mapping=None, graph: bytes | None = None) -> Path:
    import yaml

    cfg = yaml.safe_load((FIXTURES / "fastpitch_config.yaml").read_text())
    if config_edit:
        config_edit(cfg)
    arts = [binary_artifact("model_graph.onnx", graph or (FIXTURES / "fastpitch_ragged.onnx").read_bytes(), onnx=True),
            text_artifact("model_config.yaml", yaml.safe_dump(cfg))]
    if mapping is not None:
        arts.append(text_artifact("mapping.txt", mapping))
    return write_export(tmp / "fp.riva", "nemo.collections.tts.models.FastPitchModel", arts)


def test_a_tokenizer_that_does_not_fit_the_embedding_is_refused(nemo, tmp_path):
    def no_punctuation(cfg):
        cfg["text_tokenizer"]["punct"] = False

    with pytest.raises(ValidationError) as err:
        deployed(tmp_path, rmir(tmp_path, [_fastpitch(tmp_path, config_edit=no_punctuation), nemo[1]]))
    assert "the text tokenizer has 30 symbols but FastPitch's embedding has 45 rows" in err.value.violations[0]


def test_a_mapping_that_does_not_fit_is_refused(nemo, tmp_path):
    mapping = (FIXTURES / "fastpitch_mapping.txt").read_text().replace("2 b", "2 x")
    with pytest.raises(ValidationError) as err:
        deployed(tmp_path, rmir(tmp_path, [_fastpitch(tmp_path, mapping=mapping), nemo[1]]))
    assert err.value.violations == ["nemo2riva's mapping.txt does not match the model's tokenizer: line 4 is '2 x'; "
                                    "the model config's tokenizer gives '2 b'"]


def test_an_unsupported_tokenizer_is_named(nemo, tmp_path):
    def german(cfg):
        cfg["text_tokenizer"]["_target_"] = "nemo.collections.common.tokenizers.text_to_speech.tts_tokenizers." \
                                            "GermanCharsTokenizer"

    with pytest.raises(ValidationError) as err:
        rmir(tmp_path, [_fastpitch(tmp_path, config_edit=german), nemo[1]])
    assert "GermanCharsTokenizer is not one servicemaker reproduces" in err.value.violations[0]


def test_a_phoneme_voice_without_a_dictionary_is_refused_at_build(nemo, tmp_path):
    def arpabet(cfg):
        cfg["text_tokenizer"] = {"_target_": "nemo.collections.common.tokenizers.text_to_speech.tts_tokenizers."
                                             "EnglishPhonemesTokenizer", "g2p": {"phoneme_probability": 0.5}}

    with pytest.raises(ValidationError) as err:
        rmir(tmp_path, [_fastpitch(tmp_path, config_edit=arpabet), nemo[1]])
    assert err.value.violations == ["EnglishPhonemesTokenizer needs a phone dictionary: the model config's "
                                    "text_tokenizer.g2p.phoneme_dict names none; give --phone_dictionary_file"]


def test_mel_bands_must_agree(nemo, tmp_path):
    def forty(cfg):
        cfg["n_mel_channels"] = 40

    with pytest.raises(ValidationError) as err:
        rmir(tmp_path, [_fastpitch(tmp_path, config_edit=forty), nemo[1]])
    assert "FastPitch makes 40 mel bands but the vocoder was trained on 80" in err.value.violations


def test_a_graph_that_is_not_fastpitch_is_refused_at_build(nemo, tmp_path):
    hifigan = (FIXTURES / "hifigan.onnx").read_bytes()
    with pytest.raises(ValidationError) as err:
        rmir(tmp_path, [_fastpitch(tmp_path, graph=hifigan), nemo[1]])
    assert "does not fit pipeline speech_synthesis" in str(err.value)
    assert "the graph has no input 'text' (it has spec)" in err.value.violations[0]


def test_phoneme_voice_with_its_dictionary_and_a_replacement(tmp_path):
    fp, hg = tts_exports(tmp_path / "fp.riva", tmp_path / "hg.riva", phonemes=True)
    repo = deployed(tmp_path / "a", rmir(tmp_path, [fp, hg], phone_set="arpabet"))
    folder = repo / f"tts_preprocessor-{VOICE}" / "1"
    assert (folder / "phone_dict.cmudict").is_file()
    other = tmp_path / "other.dict"
    other.write_text("HELLO  HH EH1 L OW0\n", encoding="latin-1")
    repo = deployed(tmp_path / "b", rmir(tmp_path, [fp, hg], phone_dictionary_file=str(other)))
    params = config(repo, f"tts_preprocessor-{VOICE}").parameters
    assert params["phone_dictionary_file"].string_value == "phone_dictionary_file.dict"


def test_both_networks_come_from_the_compile_cache(nemo, tmp_path):
    path = rmir(tmp_path, list(nemo))
    first = deploy(DeployOptions(rmirs=[ArchiveArg(path, None)], repo=tmp_path / "r1", target="onnxruntime-python"))
    second = deploy(DeployOptions(rmirs=[ArchiveArg(path, None)], repo=tmp_path / "r2", target="onnxruntime-python"))
    nets = {f"riva-onnx-fastpitch_encoder-{VOICE}", f"riva-onnx-hifigan-{VOICE}"}
    assert set(first.cache) == nets and set(first.cache.values()) == {"miss"}
    assert second.cache == {n: "hit" for n in nets}
    for name in (f"tts_synthesizer-{VOICE}", f"tts_preprocessor-{VOICE}"):
        assert (tmp_path / "r1" / name / "config.pbtxt").read_text() == (tmp_path / "r2" / name / "config.pbtxt"
                                                                        ).read_text()


def test_svc_deploy_overrides_name_the_network(nemo, tmp_path):
    path = rmir(tmp_path, list(nemo))
    with pytest.raises(UsageError) as err:
        deployed(tmp_path, path, overrides={"nn.precision": "int8"})
    assert "svc-deploy cannot override --nn.precision" in str(err.value)
    assert "--spectrogram_generator.precision" in err.value.hint and "--vocoder.precision" in err.value.hint
    repo = deployed(tmp_path, path, overrides={"vocoder.fuse": "false"})
    models = json.loads((repo / "deploy_status.json").read_text())["models"]
    assert "fusion" not in models[f"riva-onnx-hifigan-{VOICE}"]["optimization"]      # the override applied
    assert "fusion" in models[f"riva-onnx-fastpitch_encoder-{VOICE}"]["optimization"]  # to that network only


def test_fused_layout_is_refused(nemo, tmp_path):
    with pytest.raises(UsageError) as err:
        deployed(tmp_path, rmir(tmp_path, list(nemo)), serving="fused")
    assert "--serving=fused cannot serve fastpitch_hifigan_ensemble-English-US" in str(err.value)
    assert err.value.hint == "deploy this RMIR with --serving=ensemble"


def test_encrypted_exports_and_rmir(tmp_path):
    """Both exports encrypted (servicemaker's AES-GCM, as an export with a key), an encrypted RMIR: the voice
    deploys with the key, and a wrong key is named before anything is written."""
    from servicemaker.errors import WrongKeyError
    from servicemaker.keys import Secret

    fp, hg = tts_exports(tmp_path / "fp.riva", tmp_path / "hg.riva", key="tlt_encode")
    out = tmp_path / "tts.rmir"
    key = Secret("rmir-key")
    build(BuildOptions(pipeline="speech_synthesis", output=ArchiveArg(out, key),
                       inputs=[ArchiveArg(fp, Secret("tlt_encode")), ArchiveArg(hg, Secret("tlt_encode"))]))
    with pytest.raises(WrongKeyError):
        deploy(DeployOptions(rmirs=[ArchiveArg(out, Secret("wrong"))], repo=tmp_path / "bad",
                             target="onnxruntime-python"))
    assert not (tmp_path / "bad").exists()
    deploy(DeployOptions(rmirs=[ArchiveArg(out, key)], repo=tmp_path / "repo", target="onnxruntime-python"))
    assert (tmp_path / "repo" / f"riva-onnx-hifigan-{VOICE}" / "1" / "model.onnx").is_file()
