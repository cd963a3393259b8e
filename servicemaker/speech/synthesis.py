"""The speech-synthesis networks' interfaces, as NeMo exports them, read from the graphs (never assumed):

- FastPitch (``FastPitchModel``), ``ragged`` as nemo2riva exports it (``export_config: {enable_ragged_batches,
  enable_volume}``): ``text`` int64 ``[N]``, ``pitch`` / ``pace`` / ``volume`` float ``[N]`` (every sentence of the
  batch concatenated), ``batch_lengths`` int32 ``[B+1]`` (offsets from 0), optionally ``speaker`` int64 ``[B]``;
  or ``padded`` as NeMo's own export: ``text`` / ``pitch`` / ``pace`` ``[B, T]`` (``volume`` too when enabled).
  Outputs ``spect`` float ``[B, n_mels, T]`` and ``num_frames`` int64 ``[B]`` (then durations, pitch, ...).
- HiFi-GAN (``HifiGanModel``): ``spec`` float ``[B, n_mels, T]`` → ``audio`` float ``[B, 1, hop·T]`` (or ``[B,
  hop·T]``).

The checks return readable problems; :func:`fastpitch_interface` and :func:`hifigan_interface` what the deploy
records (JSON-able, kept in the compile cache with the compiled network).
"""

from __future__ import annotations

from typing import Any

from servicemaker.onnx_scan import Signature

RAGGED, PADDED = "ragged", "padded"
#: FastPitch's per-symbol inputs
SYMBOL_INPUTS = ("text", "pitch", "pace", "volume")
FLOAT, INT64, INT32 = "TYPE_FP32", "TYPE_INT64", "TYPE_INT32"


def _by_name(tensors: Any) -> dict[str, Any]:
    return {t.name: t for t in tensors}


def fastpitch_interface(sig: Signature) -> tuple[dict[str, Any], list[str]]:
    """The layout and tensors of a FastPitch graph, and every way it is not NeMo's FastPitch export."""
    ins, outs = _by_name(sig.inputs), _by_name(sig.outputs)
    problems: list[str] = []
    text = ins.get("text")
    if text is None:
        return {}, [f"the graph has no input 'text' (it has {', '.join(ins) or 'none'}); export FastPitch with "
                    "NeMo's FastPitchModel.export() or nemo2riva"]
    layout = RAGGED if len(text.shape) == 1 else PADDED
    rank = 1 if layout == RAGGED else 2
    if len(text.shape) not in (1, 2):
        problems.append(f"input text has rank {len(text.shape)}; NeMo's export has [N] (ragged) or [B, T]")
    if text.data_type != INT64:
        problems.append(f"input text is {text.data_type[5:]}, expected INT64 symbol ids")
    for name in ("pitch", "pace", "volume"):
        t = ins.get(name)
        if t is None:
            if name != "volume":
                problems.append(f"the graph has no input '{name}'")
            continue
        if t.data_type != FLOAT or len(t.shape) != rank:
            problems.append(f"input {name} is {t.data_type[5:]} of rank {len(t.shape)}; expected FP32 like text")
    if layout == RAGGED:
        lengths = ins.get("batch_lengths")
        if lengths is None:
            problems.append("a ragged export (text [N]) needs input batch_lengths [B+1]")
        elif lengths.data_type not in (INT32, INT64) or len(lengths.shape) != 1:
            problems.append(f"input batch_lengths is {lengths.data_type[5:]} of rank {len(lengths.shape)}; "
                            "expected INT32 [B+1]")
        if "volume" not in ins:
            problems.append("a ragged export needs input volume (nemo2riva's enable_volume)")
    speaker = ins.get("speaker")
    if speaker is not None and (speaker.data_type not in (INT32, INT64) or len(speaker.shape) != 1):
        problems.append(f"input speaker is {speaker.data_type[5:]} of rank {len(speaker.shape)}; expected [B] ids")
    known = set(SYMBOL_INPUTS) | {"batch_lengths", "speaker"}
    extra = [n for n in ins if n not in known]
    if extra:
        problems.append(f"inputs {', '.join(extra)} are not FastPitch's (text, pitch, pace, volume, batch_lengths, "
                        "speaker)")
    spect, frames = outs.get("spect"), outs.get("num_frames")
    if spect is None or frames is None:
        problems.append(f"the graph needs outputs spect and num_frames (it has {', '.join(outs)})")
    else:
        if spect.data_type != FLOAT or len(spect.shape) != 3:
            problems.append(f"output spect is {spect.data_type[5:]} of rank {len(spect.shape)}; expected FP32 "
                            "[B, n_mels, T]")
        if frames.data_type not in (INT64, INT32) or len(frames.shape) != 1:
            problems.append(f"output num_frames is {frames.data_type[5:]} of rank {len(frames.shape)}; expected [B]")
    n_mels = spect.shape[1] if spect is not None and len(spect.shape) == 3 and isinstance(spect.shape[1], int) \
        else None
    return {"layout": layout, "inputs": [n for n in ins], "speaker": speaker is not None,
            "speaker_dtype": speaker.data_type if speaker is not None else None,
            "lengths_dtype": ins["batch_lengths"].data_type if "batch_lengths" in ins else None,
            "n_mels": n_mels}, problems


def hifigan_interface(sig: Signature) -> tuple[dict[str, Any], list[str]]:
    """The tensors of a HiFi-GAN graph, and every way it is not NeMo's HiFi-GAN export."""
    problems: list[str] = []
    if len(sig.inputs) != 1 or len(sig.outputs) != 1:
        return {}, [f"a vocoder takes one spectrogram and gives one audio tensor; the graph has inputs "
                    f"{', '.join(t.name for t in sig.inputs)} and outputs {', '.join(t.name for t in sig.outputs)}"]
    spec, audio = sig.inputs[0], sig.outputs[0]
    if spec.data_type != FLOAT or len(spec.shape) != 3:
        problems.append(f"input {spec.name} is {spec.data_type[5:]} of rank {len(spec.shape)}; expected FP32 "
                        "[B, n_mels, T]")
    if audio.data_type != FLOAT or len(audio.shape) not in (2, 3):
        problems.append(f"output {audio.name} is {audio.data_type[5:]} of rank {len(audio.shape)}; expected FP32 "
                        "[B, 1, samples]")
    elif len(audio.shape) == 3 and audio.shape[1] not in (1, "dim1") and isinstance(audio.shape[1], int):
        problems.append(f"output {audio.name} has {audio.shape[1]} channels; a vocoder gives mono audio")
    n_mels = spec.shape[1] if len(spec.shape) == 3 and isinstance(spec.shape[1], int) else None
    return {"input": spec.name, "output": audio.name, "n_mels": n_mels}, problems


def embedding_rows(model: Any) -> int | None:
    """How many symbols FastPitch's text embedding has: the rows of the 2-D float table the first ``Gather`` of
    the graph looks ids up in (NeMo's ``encoder.word_emb``, whose node it prefers by name); None where the graph
    has no such lookup."""
    import onnx

    tables = {t.name: t for t in model.graph.initializer
              if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2}
    lookups = [n for n in model.graph.node if n.op_type == "Gather" and n.input and n.input[0] in tables]
    named = [n for n in lookups if "word_emb" in n.input[0] or "word_emb" in n.name]
    for node in named or lookups[:1]:
        return int(tables[node.input[0]].dims[0])
    return None


def hop_of(model: Any, n_mels: int, frames: int = 4) -> int:
    """Samples per spectrogram frame of a vocoder graph, measured: its audio length for ``frames`` frames."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    spec = np.zeros((1, n_mels, frames), dtype=np.float32)
    audio = session.run(None, {session.get_inputs()[0].name: spec})[0]
    samples = int(audio.shape[-1])
    if samples % frames:
        raise ValueError(f"the vocoder gives {samples} samples for {frames} frames, not a whole hop per frame")
    return samples // frames


# --- the ragged batching loop -------------------------------------------------------------------------------------

def _names_used(graph: Any) -> set[str]:
    """Every value name the nodes of ``graph`` and of their subgraphs read."""
    import onnx

    out: set[str] = set()
    for node in graph.node:
        out.update(node.input)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                out |= _names_used(attr.g)
    return out


def _loop_sources(graph: Any, loop: Any) -> dict[str, str]:
    """The loop's outputs that are padded copies of graph inputs (a carried tensor the body fills with
    ``ScatterND`` from a ``Slice`` of that input, NeMo's ``batch_from_ragged``) → the input's name."""
    body = next(a.g for a in loop.attribute if a.name == "body")
    made = {o: n for n in body.node for o in n.output}
    outer = {o: n for n in graph.node for o in n.output}
    inputs = {i.name for i in graph.input}
    carried = {body.input[2 + k].name: loop.input[2 + k] for k in range(len(loop.input) - 2)
               if 2 + k < len(body.input)}

    def graph_input(name: str) -> str | None:
        for _ in range(32):
            if name in inputs:
                return name
            if name in carried:
                name = carried[name]
                continue
            node = made.get(name) or outer.get(name)
            if node is None or node.op_type != "Identity":
                return None
            name = node.input[0]
        return None

    def sliced(name: str) -> str | None:
        todo, seen = [name], set()
        while todo:
            cur = todo.pop()
            if cur in seen:
                continue
            seen.add(cur)
            node = made.get(cur)
            if node is None:
                continue
            if node.op_type == "Slice":
                found = graph_input(node.input[0])
                if found is not None:
                    return found
            todo.extend(node.input)
        return None

    out = {}
    for k in range(len(loop.input) - 2):
        node = made.get(body.output[1 + k].name)
        while node is not None and node.op_type == "Identity":
            node = made.get(node.input[0])
        if node is not None and node.op_type == "ScatterND":
            source = sliced(node.input[2])
            if source in SYMBOL_INPUTS and k < len(loop.output):
                out[loop.output[k]] = source
    return out


def unragged(model: Any) -> bool:
    """Turn a ragged FastPitch export into the padded one its batching loop feeds (in place): the loop that pads
    the concatenated ``text`` / ``pitch`` / ``pace`` / ``volume`` by ``batch_lengths`` is cut out, and the core
    takes those as ``[B, T]`` inputs (padded with the pad symbol, pace and volume 1: the synthesizers feed them
    so). TensorRT-RTX's builder fails on the loop; the padded core builds. False (nothing changed) where the graph
    has no such loop or reads the ragged inputs elsewhere."""
    import copy

    from onnx import helper

    graph = model.graph
    loops = [n for n in graph.node if n.op_type == "Loop"]
    found = next(((lp, m) for lp in loops if {"text", "pitch", "pace"} <= set((m := _loop_sources(graph, lp))
                                                                             .values())), None)
    if found is None:
        return False
    loop, sources = found
    work = copy.deepcopy(graph)
    old = {i.name: i for i in work.input}
    ragged = {name: f"{name}__ragged" for name in list(sources.values()) + ["batch_lengths"] if name in old}

    def rename(g: Any) -> None:
        import onnx

        for node in g.node:
            node.input[:] = [ragged.get(i, i) for i in node.input]
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    rename(attr.g)

    rename(work)
    nodes = [n for n in work.node if not (n.op_type == "Loop" and list(n.output) == list(loop.output))]
    for node in nodes:
        node.input[:] = [sources.get(i, i) for i in node.input]
    # dead code: keep what the outputs need
    needed = {o.name for o in work.output}
    kept = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
            sub = helper.make_graph([node], "n", [], [])
            needed |= _names_used(sub)
    kept.reverse()
    if any(name in needed for name in ragged.values()):
        return False
    new_inputs = [helper.make_tensor_value_info(name, old[name].type.tensor_type.elem_type, ["batch", "symbols"])
                  for name in SYMBOL_INPUTS if name in sources.values()]
    others = [i for name, i in old.items() if name not in ragged and name in needed]
    del work.node[:]
    work.node.extend(kept)
    del work.input[:]
    work.input.extend(new_inputs + others)
    used = needed | {o.name for o in work.output}
    initializers = [t for t in work.initializer if t.name in used]
    del work.initializer[:]
    work.initializer.extend(initializers)
    graph.CopyFrom(work)
    return True


# --- the padding leak ------------------------------------------------------------------------------------------------

#: ops a masked sequence passes through between two convolutions without mixing time steps
_POINTWISE = {"Relu", "LeakyRelu", "Transpose", "LayerNormalization", "Identity", "Dropout", "Tanh", "Sigmoid"}
#: NeMo's parameter names of the pitch and energy embeddings (Conv1d over per-symbol values) and of the predictor
#: whose mask is the symbols' mask
_EMBEDDINGS = ("pitch_emb.weight", "energy_emb.weight")
_SYMBOL_MASKED = "pitch_predictor."


def mask_padding(model: Any) -> dict[str, Any]:
    """Make NeMo FastPitch's padded batches compute each row as it would alone (in place); what was changed.

    NeMo masks a padded batch (``x * mask``) before each block, but a block of two convolutions (the transformer
    layers' feed-forward, the duration and pitch predictors) runs its second one on the first one's output, which
    is not zero at the padded steps: it leaks into the last real steps of every shorter row. Before every such
    convolution after the first, this multiplies its input by the block's mask again (``masked_convolutions``).
    The pitch (and energy) embedding convolves the per-symbol pitch, which padding sets to 1 (NeMo's
    ``batch_from_ragged``): its input is masked by the symbols' mask too (``masked_embeddings``, found by NeMo's
    parameter names). Alone, a row's mask is all ones: its outputs are unchanged."""
    from onnx import helper

    graph = model.graph
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only(name: str) -> Any:
        found = consumers.get(name, [])
        return found[0] if len(found) == 1 else None

    inserted: list[tuple[Any, Any]] = []   # (anchor, node to insert after it)
    transposed: dict[str, str] = {}
    masked, symbol_mask = 0, None

    def time_last(mask: str, anchor: Any) -> str:
        """The ``[B, T, 1]`` mask as ``[B, 1, T]`` (one Transpose per mask)."""
        if mask not in transposed:
            transposed[mask] = f"{mask}__time_last"
            inserted.append((anchor, helper.make_node("Transpose", [mask], [transposed[mask]], perm=[0, 2, 1],
                                                      name=f"{mask}__time_last")))
        return transposed[mask]

    seen: set[str] = set()
    for node in list(graph.node):
        if node.op_type != "Mul" or len(node.input) != 2:
            continue
        starts = [t for t in consumers.get(node.output[0], []) if t.op_type == "Transpose"
                  and only(t.output[0]) is not None and only(t.output[0]).op_type == "Conv"]
        if len(starts) != 1 or only(starts[0].output[0]).name in seen:
            continue
        mask, conv = node.input[1], only(starts[0].output[0])
        seen.add(conv.name)
        if any(_SYMBOL_MASKED in i for i in conv.input[1:]):
            symbol_mask = (mask, node)
        current = conv
        while True:
            nxt = only(current.output[0])
            while nxt is not None and nxt.op_type in _POINTWISE:
                current, nxt = nxt, only(nxt.output[0])
            if nxt is None or nxt.op_type != "Conv" or nxt.name in seen:
                break
            remasked = f"{current.output[0]}__masked"
            inserted.append((current, helper.make_node("Mul", [current.output[0], time_last(mask, node)],
                                                       [remasked], name=f"{nxt.name}__mask")))
            nxt.input[0] = remasked
            seen.add(nxt.name)
            masked += 1
            current = nxt
    embeddings = 0
    if symbol_mask is not None:
        mask, anchor = symbol_mask
        for conv in [n for n in graph.node if n.op_type == "Conv" and any(i.endswith(_EMBEDDINGS)
                                                                           for i in n.input[1:])]:
            source = conv.input[0]
            remasked = f"{source}__masked"
            producer = next(n for n in graph.node if source in n.output) if any(
                source in n.output for n in graph.node) else anchor
            inserted.append((producer, helper.make_node("Mul", [source, time_last(mask, anchor)], [remasked],
                                                        name=f"{conv.name}__mask")))
            conv.input[0] = remasked
            embeddings += 1
    nodes = list(graph.node)
    for anchor, new in inserted:
        nodes.insert(nodes.index(anchor) + 1, new)
    _toposort(nodes, {i.name for i in graph.input} | {t.name for t in graph.initializer})
    del graph.node[:]
    graph.node.extend(nodes)
    return {"masked_convolutions": masked, "masked_embeddings": embeddings}


def _toposort(nodes: list[Any], known: set[str]) -> None:
    """Order ``nodes`` (in place) so each comes after the producers of its inputs (outer-scope names of subgraphs
    aside), keeping the given order where it already holds."""
    produced = {o for n in nodes for o in n.output}
    done, out, waiting = set(known), [], list(nodes)
    while waiting:
        progress = []
        for node in waiting:
            if all(i == "" or i in done or i not in produced for i in node.input):
                out.append(node)
                done.update(node.output)
            else:
                progress.append(node)
        if len(progress) == len(waiting):  # a cycle cannot happen in a valid graph; keep what is left as it was
            out.extend(progress)
            break
        waiting = progress
    nodes[:] = out


__all__ = ["PADDED", "RAGGED", "embedding_rows", "fastpitch_interface", "hifigan_interface", "hop_of",
           "mask_padding", "unragged"]
