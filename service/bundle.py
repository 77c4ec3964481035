"""Load and validate a bundle folder: model.json, the two ONNX graphs, the two tokenizers.

A bundle that is incomplete or does not agree with its own manifest fails here, at start,
with a `BundleError` naming the file or the manifest field at fault. The graphs themselves
are checked against the manifest by `check_graph` once the engine has opened them, and the
service checks that the files are the ones exported (`check_version`), so a file damaged or
replaced after export is refused instead of served.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

FORMAT_VERSION = 1
FILE_KEYS = ("encoder", "decoder_step", "src_tokenizer", "tgt_tokenizer")
ENCODER_INPUTS = ["src_ids", "src_lengths"]
ENCODER_OUTPUTS = ["memory", "keys", "src_mask", "hidden"]
# "k", the top-k width of a step, came later: a decoder graph without it (exported before)
# always gives sizes.topk candidates per row and is still served.
DECODER_INPUTS = ["prev_tokens", "hidden", "memory", "keys", "src_mask", "k"]
DECODER_OUTPUTS = ["log_probs", "hidden_out", "attention", "topk_log_probs", "topk_ids"]
GRAPH_IO = {
    "encoder": ([ENCODER_INPUTS], ENCODER_OUTPUTS),
    "decoder_step": ([DECODER_INPUTS, DECODER_INPUTS[:-1]], DECODER_OUTPUTS),
}
REQUIRED_FIELDS = ("id", "version", "source_lang", "target_lang", "files", "special_tokens", "sizes", "graphs")


class BundleError(Exception):
    """The bundle folder is missing something or contradicts its manifest."""


@dataclass(frozen=True)
class Bundle:
    """A validated bundle. Token ids and sizes come from the manifest."""

    path: Path
    manifest: dict[str, Any]
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer
    pad_id: int
    unk_id: int
    bos_id: int
    eos_id: int

    def file(self, key: str) -> Path:
        return self.path / self.manifest["files"][key]

    def graph_io(self, key: str, kind: str) -> list[str]:
        """The input or output names of a graph, as model.json declares them."""
        return self.manifest["graphs"][key][kind]

    @property
    def sizes(self) -> dict[str, int]:
        return self.manifest["sizes"]

    def max_target_len(self, src_len: int) -> int:
        """Output subwords allowed for a source of src_len ids (its EOS included):
        min(cap, int(ratio * src_len) + extra), the rule the model was checked with."""
        rule = {"ratio": 1.5, "extra": 10, "cap": 256, **self.manifest.get("max_length", {})}
        return min(int(rule["cap"]), int(rule["ratio"] * src_len) + int(rule["extra"]))

    def encode(self, text: str) -> list[int]:
        """Source text -> subword ids followed by EOS."""
        return self.src_tokenizer.encode(text).ids + [self.eos_id]

    def decode(self, ids: list[int]) -> str:
        """Target ids -> text, stopping at EOS and leaving out the special tokens."""
        out = []
        for i in ids:
            if i == self.eos_id:
                break
            out.append(int(i))
        return self.tgt_tokenizer.decode(out, skip_special_tokens=True)


def _field(manifest: dict, dotted: str) -> Any:
    value: Any = manifest
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise BundleError(f"model.json: missing field {dotted!r}")
        value = value[part]
    return value


def _load_tokenizer(path: Path, vocab: int, field: str, specials: dict[str, int], names: list[str]) -> Tokenizer:
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises plain Exceptions
        raise BundleError(f"{path.name}: not a readable tokenizer file ({exc})") from exc
    size = tok.get_vocab_size(with_added_tokens=True)
    if size != vocab:
        raise BundleError(f"{path.name}: vocabulary of {size} tokens but model.json {field} is {vocab}")
    for name, (key, token_id) in zip(names, specials.items(), strict=True):
        if tok.token_to_id(name) != token_id:
            raise BundleError(f"{path.name}: special token {name!r} is not id {token_id} (special_tokens.{key})")
    return tok


def load_bundle(path: str | Path) -> Bundle:
    """Read model.json, check that every file it names exists, load the tokenizers and check
    them against the manifest's sizes and special token ids."""
    folder = Path(path)
    manifest_path = folder / "model.json"
    if not manifest_path.is_file():
        raise BundleError(f"no model.json in bundle folder {folder}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"model.json: not valid JSON ({exc})") from exc
    for name in REQUIRED_FIELDS:
        _field(manifest, name)
    if manifest.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise BundleError(
            f"model.json: format_version {manifest['format_version']} is not supported (expected {FORMAT_VERSION})"
        )
    for key in FILE_KEYS:
        name = _field(manifest, f"files.{key}")
        if not (folder / name).is_file():
            raise BundleError(f"bundle file missing: {name} (files.{key} in model.json) in {folder}")
    for graph, (inputs, outputs) in GRAPH_IO.items():
        for kind, accepted in (("inputs", inputs), ("outputs", [outputs])):
            declared = _field(manifest, f"graphs.{graph}.{kind}")
            if declared not in accepted:
                expected = " or ".join(str(names) for names in accepted)
                raise BundleError(f"model.json: graphs.{graph}.{kind} is {declared}, the service expects {expected}")
    ids = {key: int(_field(manifest, f"special_tokens.{key}")) for key in ("pad", "unk", "bos", "eos")}
    names = _field(manifest, "special_tokens.names")
    for key in ("src_vocab", "tgt_vocab", "memory_dim", "keys_dim", "dec_hidden", "dec_layers", "topk"):
        _field(manifest, f"sizes.{key}")
    sizes = manifest["sizes"]
    src_tok = _load_tokenizer(
        folder / manifest["files"]["src_tokenizer"], sizes["src_vocab"], "sizes.src_vocab", ids, names
    )
    tgt_tok = _load_tokenizer(
        folder / manifest["files"]["tgt_tokenizer"], sizes["tgt_vocab"], "sizes.tgt_vocab", ids, names
    )
    return Bundle(folder, manifest, src_tok, tgt_tok, ids["pad"], ids["unk"], ids["bos"], ids["eos"])


def file_digest(folder: Path, names: list[str]) -> str:
    """A bundle's version: the first 16 hex digits of the sha256 of its files, in the manifest's order."""
    h = hashlib.sha256()
    for name in names:
        h.update((folder / name).read_bytes())
    return h.hexdigest()[:16]


def check_version(bundle: Bundle) -> None:
    """Refuse files that are not the ones exported: their digest must be the manifest's version."""
    found = file_digest(bundle.path, [bundle.manifest["files"][key] for key in FILE_KEYS])
    if found != bundle.manifest["version"]:
        raise BundleError(
            f"the files of {bundle.path} have digest {found} but model.json version is {bundle.manifest['version']}: "
            "a file was damaged or replaced after export"
        )


def check_graph(bundle: Bundle, key: str, inputs: list[Any], outputs: list[Any]) -> None:
    """Check an opened graph (onnxruntime NodeArg lists) against the manifest: the input and
    output names, and the fixed dimensions the manifest gives sizes for."""
    name = bundle.manifest["files"][key]
    for kind, args in (("inputs", inputs), ("outputs", outputs)):
        expected = bundle.graph_io(key, kind)  # one of GRAPH_IO's, checked by load_bundle
        found = [a.name for a in args]
        if found != expected:
            raise BundleError(f"{name}: graph {kind} are {found}, model.json graphs.{key}.{kind} says {expected}")
    s = bundle.sizes
    fixed = {  # name -> {axis: (size, manifest field)}
        "memory": {2: (s["memory_dim"], "sizes.memory_dim")},
        "keys": {2: (s["keys_dim"], "sizes.keys_dim")},
        "hidden": {0: (s["dec_layers"], "sizes.dec_layers"), 2: (s["dec_hidden"], "sizes.dec_hidden")},
        "hidden_out": {0: (s["dec_layers"], "sizes.dec_layers"), 2: (s["dec_hidden"], "sizes.dec_hidden")},
        "log_probs": {1: (s["tgt_vocab"], "sizes.tgt_vocab")},
        "topk_ids": {1: (s["topk"], "sizes.topk")},
    }
    for arg in [*inputs, *outputs]:
        for axis, (size, field) in fixed.get(arg.name, {}).items():
            dim = arg.shape[axis] if len(arg.shape) > axis else None
            if isinstance(dim, int) and dim != size:
                raise BundleError(f"{name}: {arg.name} has size {dim} on axis {axis} but model.json {field} is {size}")
