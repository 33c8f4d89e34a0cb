"""GGL-Net: gradient-guided learning network (Zhao, Yu et al.), in Flax NNX.

Weight-compatible with the official PyTorch code (YuChuang1205/MSDA-Net,
`model/GGL_Net/model_GGL.py`): attribute names mirror the torch module names,
with `nnx.List` at the torch `nn.Sequential` indices (parameter-free layers
such as ReLU or max pooling sit at their torch index as plain functions), so
`irstd_jax.convert` maps an official state dict by name.

The network has three parts:
  * feature extraction: a five-stage main branch (residual blocks with SE
    attention) and a supplementary branch of max-pooled gradient magnitude
    images, joined at every stage by the gradient supplementary module (GSM:
    a G_Block that encodes the gradient image, and Res, which merges it into
    the main features);
  * local contrast learning (LCL) heads on the five stage outputs;
  * top-down fusion by the two-way guidance fusion module (TGFM, `Sbam` in
    the official code): channel attention computed from the high level
    re-weights the low level, spatial attention computed from the low level
    re-weights the high level.

The model returns logits; the official code ends with a sigmoid, so its
output equals `jax.nn.sigmoid(logits)`.

Ablations of the paper (all default to the official model):
  * `main_input` 'image' | 'gradient' and `supplementary` 'gradient' |
    'image' | 'none': Table I ("Original" = ('image', 'none'), "Gradient +
    Original" = ('gradient', 'image'), ...).
  * `gsm` 'res' | 'add' | 'gblock_in_branch': Table II. 'res' is M_G_Res (the
    official GSM). 'add' is M_G_Add: the Res merge is replaced by element-wise
    addition, stage output = main + G_Block(gradient). 'gblock_in_branch' is
    M-G-M_Res: the G_Blocks sit inside the supplementary branch between its
    max poolings (G_Block_k encodes the pooled output of G_Block_{k-1}, so
    its input has the previous stage's width) and Res merges their outputs.
    The official code has neither variant; these follow the paper's text.
  * `fusion` 'tgfm' | 'add' | 'cam' | 'sam': Table III. With X the low level
    and Y the upsampled high level: TGFM Z = C(Y) X + S(X) Y; ADD Z = X + Y;
    CAM Z = C(Y) X + Y; SAM Z = X + S(X) Y.
  * `ca_ratio`: the channel-attention reduction r of the TGFM (Fig. 7; 8).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from irstd_jax.models import cpu_kernels
from irstd_jax.models import layers

STAGE_WIDTHS = (16, 32, 64, 128, 256)
# Four 2x down-samplings: height and width must be multiples of this.
TOTAL_STRIDE = 16

MAIN_INPUTS = ('image', 'gradient')
SUPPLEMENTARY_INPUTS = ('gradient', 'image', 'none')
GSM_VARIANTS = ('res', 'add', 'gblock_in_branch')
FUSION_VARIANTS = ('tgfm', 'add', 'cam', 'sam')


def gradient_magnitude(x: jax.Array) -> jax.Array:
  """Per-channel central-difference gradient magnitude of NHWC `x`.

  Zero padding at the border, as the official `gradient_1order`:
  sqrt(((x[i, j+1] - x[i, j-1]) / 2)^2 + ((x[i-1, j] - x[i+1, j]) / 2)^2).
  """
  p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  dx = (p[:, 1:-1, 2:] - p[:, 1:-1, :-2]) * 0.5
  dy = (p[:, :-2, 1:-1] - p[:, 2:, 1:-1]) * 0.5
  return jnp.sqrt(jnp.square(dx) + jnp.square(dy))


def _relu(x):
  return jax.nn.relu(x)


def _sigmoid(x):
  return jax.nn.sigmoid(x)


def _max_pool2(x):
  return layers.max_pool(x, 2)


def _upsample2_align_corners(x):
  # nn.UpsamplingBilinear2d(scale_factor=2) in the official code: align_corners=True.
  return layers.upsample_bilinear(x, 2, align_corners=True)


def _max_keepdims(x: jax.Array, axis: int) -> jax.Array:
  """Max over `axis` (kept), with its gradient routed to the first argmax.

  This is the gradient of torch's max pooling and `torch.max(dim)`. It is
  also robust: `jnp.max` finds the maximum's positions for its gradient by
  comparing the input with the output, and when XLA fuses and recomputes the
  input inside the jitted backward pass, the comparison can match nowhere and
  the gradient becomes 0 / 0 = NaN (seen on the deepest, 2x2 level of the
  TGFM with batch statistics). Taking the element at the argmax has neither
  problem. With fast kernels, `cpu_kernels.max_first` computes the argmax
  only under differentiation.
  """
  axis = axis % x.ndim
  if layers.fast_kernels():
    return cpu_kernels.max_first(x, axis, x.shape[axis])
  return jnp.take_along_axis(x, jnp.argmax(x, axis=axis, keepdims=True), axis=axis)


def _apply(seq, x):
  """Runs an `nnx.List` laid out as a torch `nn.Sequential`."""
  for layer in seq:
    x = layer(x)
  return x


def _conv(in_channels, out_channels, kernel_size, stride=1, padding=0, *,
          rngs: nnx.Rngs) -> nnx.Conv:
  """Conv2d initialised as the official `weights_init`.

  That is kaiming normal (untruncated) with fan_out = out * kh * kw and a zero
  bias, which the official code applies to all its convolutions except those
  inside the TGFM attentions (torch's default init there).
  """
  std = math.sqrt(2.0 / (out_channels * kernel_size * kernel_size))
  return layers.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                       rngs=rngs, kernel_init=layers.normal_init(std),
                       bias_init=nnx.initializers.zeros_init())


def _conv_bn(in_channels, out_channels, stride=1, *, rngs):
  """[3x3 conv, BN]: the official two-layer pattern, as a list."""
  return [_conv(in_channels, out_channels, 3, stride, 1, rngs=rngs),
          layers.BatchNorm2d(out_channels, rngs=rngs)]


class SEAttention(nnx.Module):
  """Squeeze-and-excitation: channel weights from the global average."""

  def __init__(self, channels: int, reduction: int = 4, *, rngs: nnx.Rngs):
    hidden = channels // reduction
    self.fc = nnx.List([layers.Linear(channels, hidden, bias=False, rngs=rngs),
                        _relu,
                        layers.Linear(hidden, channels, bias=False, rngs=rngs),
                        _sigmoid])

  def __call__(self, x: jax.Array) -> jax.Array:
    weights = _apply(self.fc, jnp.mean(x, axis=(1, 2)))
    return x * weights[:, None, None, :]


class Resnet1(nnx.Module):
  """Plain residual block (first block of stage 1)."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.layer = nnx.List([*_conv_bn(channels, channels, rngs=rngs), _relu,
                           *_conv_bn(channels, channels, rngs=rngs)])

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(_apply(self.layer, x) + x)


class Resnet2(nnx.Module):
  """Down-sampling residual block (first block of stages 2 to 5).

  The main path max-pools after its first conv; the shortcut is a stride-2
  conv.
  """

  def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
    self.layer1 = nnx.List([*_conv_bn(in_channels, out_channels, rngs=rngs),
                            _relu, _max_pool2,
                            *_conv_bn(out_channels, out_channels, rngs=rngs)])
    self.layer2 = nnx.List([
        *_conv_bn(in_channels, out_channels, stride=2, rngs=rngs), _relu])

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(_apply(self.layer1, x) + _apply(self.layer2, x))


class Resnet3(nnx.Module):
  """Residual block with SE attention between its two convs."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.layer1 = nnx.List([*_conv_bn(channels, channels, rngs=rngs), _relu])
    self.layer2 = nnx.List(_conv_bn(channels, channels, rngs=rngs))
    self.SEAttention = SEAttention(channels, 4, rngs=rngs)  # pylint: disable=invalid-name

  def __call__(self, x: jax.Array) -> jax.Array:
    out = _apply(self.layer2, self.SEAttention(_apply(self.layer1, x)))
    return jax.nn.relu(out + x)


def _g_block(in_channels, channels, *, rngs):
  """G_Block: encodes the (pooled) gradient image to the stage's width."""
  return nnx.List([*_conv_bn(in_channels, channels, rngs=rngs), _relu,
                   SEAttention(channels, 4, rngs=rngs),
                   *_conv_bn(channels, channels, rngs=rngs), _relu])


class Res(nnx.Module):
  """One GSM: `layer1` is the G_Block, `layer2` the Res merge.

  With gsm='add' the merge is a plain addition (no `layer2`). With
  gsm='gblock_in_branch' the G_Block belongs to the supplementary branch: it
  is `branch_block` (kept here so that a stage's parameters stay together),
  applied by `Stage` before the branch goes on to the next max pooling, and
  this module only merges.
  """

  def __init__(self, branch_channels: int, channels: int, gsm: str = 'res', *,
               rngs: nnx.Rngs):
    self.gsm = gsm
    if gsm == 'gblock_in_branch':
      self.branch_block = _g_block(branch_channels, channels, rngs=rngs)
    else:
      self.layer1 = _g_block(branch_channels, channels, rngs=rngs)
    if gsm != 'add':
      self.layer2 = nnx.List([*_conv_bn(2 * channels, channels, rngs=rngs),
                              _relu, SEAttention(channels, 4, rngs=rngs),
                              *_conv_bn(channels, channels, rngs=rngs)])

  def __call__(self, x: jax.Array, branch: jax.Array) -> jax.Array:
    """Merges the supplementary-branch input `branch` into main features `x`."""
    if self.gsm != 'gblock_in_branch':
      branch = _apply(self.layer1, branch)
    if self.gsm == 'add':
      return x + branch
    out = _apply(self.layer2, jnp.concatenate([x, branch], axis=-1))
    return jax.nn.relu(out + x)


class Stage(nnx.Module):
  """The dual-branch feature extractor; returns the five stage outputs."""

  def __init__(self, in_channels: int = 3, supplementary: bool = True,
               gsm: str = 'res', *, rngs: nnx.Rngs):
    self.supplementary = supplementary
    self.gsm = gsm
    w = STAGE_WIDTHS
    self.layer1 = nnx.List([*_conv_bn(in_channels, w[0], rngs=rngs), _relu,
                            *_conv_bn(w[0], w[0], rngs=rngs), _relu])
    branch_in = in_channels
    for i, width in enumerate(w, start=1):
      if i == 1:
        first = Resnet1(width, rngs=rngs)
      else:
        first = Resnet2(w[i - 2], width, rngs=rngs)
      setattr(self, f'resnet{i}_1', first)
      setattr(self, f'resnet{i}_2', Resnet3(width, rngs=rngs))
      setattr(self, f'resnet{i}_3', Resnet3(width, rngs=rngs))
      if supplementary:
        setattr(self, f'Res{i}', Res(branch_in, width, gsm, rngs=rngs))
        if gsm == 'gblock_in_branch':
          branch_in = width

  def __call__(self, x: jax.Array, branch: jax.Array | None) -> list[jax.Array]:
    outs = []
    out = _apply(self.layer1, x)
    for i in range(1, len(STAGE_WIDTHS) + 1):
      for j in (1, 2, 3):
        out = getattr(self, f'resnet{i}_{j}')(out)
      if self.supplementary:
        if i > 1:
          branch = _max_pool2(branch)
        res = getattr(self, f'Res{i}')
        if self.gsm == 'gblock_in_branch':
          branch = _apply(res.branch_block, branch)
        out = res(out, branch)
      outs.append(out)
    return outs


class LCL(nnx.Module):
  """Local contrast learning head: 1x1 conv, ReLU, 3x3 conv, ReLU."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.layer1 = nnx.List([_conv(channels, channels, 1, rngs=rngs), _relu,
                            _conv(channels, channels, 3, 1, 1, rngs=rngs),
                            _relu])

  def __call__(self, x: jax.Array) -> jax.Array:
    return _apply(self.layer1, x)


class ChannelAttention(nnx.Module):
  """CBAM channel attention: a shared MLP on global max and average pools."""

  def __init__(self, channels: int, reduction: int = 8, *, rngs: nnx.Rngs):
    hidden = channels // reduction
    self.se = nnx.List([
        layers.Conv2d(channels, hidden, 1, bias=False, rngs=rngs), _relu,
        layers.Conv2d(hidden, channels, 1, bias=False, rngs=rngs)])

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    spatial_max = _max_keepdims(x.reshape(b, h * w, c), 1)[:, :, None]
    max_out = _apply(self.se, spatial_max)
    avg_out = _apply(self.se, jnp.mean(x, axis=(1, 2), keepdims=True))
    return jax.nn.sigmoid(max_out + avg_out)


class SpatialAttention(nnx.Module):
  """CBAM spatial attention: 7x7 conv over channel max and mean."""

  def __init__(self, kernel_size: int = 7, *, rngs: nnx.Rngs):
    self.conv = layers.Conv2d(2, 1, kernel_size, padding=kernel_size // 2,
                              rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    pooled = jnp.concatenate([_max_keepdims(x, -1),
                              jnp.mean(x, axis=-1, keepdims=True)], axis=-1)
    return jax.nn.sigmoid(self.conv(pooled))


class Sbam(nnx.Module):
  """TGFM (named Sbam in the official code) and its Table III variants."""

  def __init__(self, in_channels: int, out_channels: int, fusion: str = 'tgfm',
               ca_ratio: int = 8, *, rngs: nnx.Rngs):
    self.fusion = fusion
    self.hl_layer = nnx.List([_upsample2_align_corners,
                              _conv(in_channels, out_channels, 1, rngs=rngs),
                              layers.BatchNorm2d(out_channels, rngs=rngs),
                              _relu])
    if fusion in ('tgfm', 'cam'):
      self.hl_layer_2 = ChannelAttention(out_channels, ca_ratio, rngs=rngs)
    if fusion in ('tgfm', 'sam'):
      self.ll_layer = SpatialAttention(rngs=rngs)

  def __call__(self, hl: jax.Array, ll: jax.Array) -> jax.Array:
    """Fuses high-level `hl` (half resolution) into low-level `ll`."""
    hl = _apply(self.hl_layer, hl)
    low = ll * self.hl_layer_2(hl) if self.fusion in ('tgfm', 'cam') else ll
    high = hl * self.ll_layer(ll) if self.fusion in ('tgfm', 'sam') else hl
    return low + high


def _check_choice(name: str, value, choices) -> None:
  if value not in choices:
    raise ValueError(f'GGLNet option {name}={value!r} is not one of {choices}.')


class GGLNet(nnx.Module):
  """GGL-Net; NHWC images in, logits (B, H, W, 1) out.

  H and W must be multiples of 16; `irstd_jax.models.apply_padded` runs the
  model on any size.
  """

  # Every parameter of the official module takes part in its forward pass.
  TORCH_UNUSED: tuple[str, ...] = ()

  def __init__(self, in_channels: int = 3, *, main_input: str = 'image',
               supplementary: str = 'gradient', gsm: str = 'res',
               fusion: str = 'tgfm', ca_ratio: int = 8, dtype=None,
               fast_kernels: bool | None = None, rngs: nnx.Rngs):
    """Builds the network.

    Args:
      in_channels: image channels (3 in the official code).
      main_input: what the main branch sees, 'image' or 'gradient' (its
        gradient magnitude).
      supplementary: what the supplementary branch carries, 'gradient',
        'image' or 'none' (no branch, no GSM).
      gsm: 'res' (official), 'add' or 'gblock_in_branch'; see the module
        docstring. Ignored when supplementary='none'.
      fusion: 'tgfm' (official), 'add', 'cam' or 'sam'.
      ca_ratio: reduction ratio r of the TGFM channel attention; the
        narrowest fused level has 16 channels, so r <= 16.
      dtype: compute dtype; None / 'float32' is the exact (parity) path,
        'bfloat16' is mixed precision for GPUs and TPUs (parameters,
        optimizer state and batch-norm statistics stay float32; the gradient
        image and the logits are float32).
      fast_kernels: True / False take or avoid the CPU speed kernels
        (`layers.use_fast_kernels`); None (default) follows that switch.
      rngs: initialisation RNGs.
    """
    self.dtype = layers.compute_dtype(dtype)
    self.fast_kernels = layers.check_fast_kernels(fast_kernels)
    _check_choice('main_input', main_input, MAIN_INPUTS)
    _check_choice('supplementary', supplementary, SUPPLEMENTARY_INPUTS)
    _check_choice('gsm', gsm, GSM_VARIANTS)
    _check_choice('fusion', fusion, FUSION_VARIANTS)
    if not isinstance(ca_ratio, int) or not 1 <= ca_ratio <= STAGE_WIDTHS[0]:
      raise ValueError(
          f'GGLNet option ca_ratio={ca_ratio!r} must be an integer in '
          f'[1, {STAGE_WIDTHS[0]}]: the channel attention of the last fusion '
          f'has {STAGE_WIDTHS[0]} channels.')
    self.in_channels = in_channels
    self.main_input = main_input
    self.supplementary = supplementary
    self.stage = Stage(in_channels, supplementary != 'none', gsm, rngs=rngs)
    w = STAGE_WIDTHS
    for i, width in enumerate(w, start=1):
      setattr(self, f'lcl{i}', LCL(width, rngs=rngs))
    for i in range(len(w) - 1, 0, -1):
      setattr(self, f'sbam{i}', Sbam(w[i], w[i - 1], fusion, ca_ratio,
                                     rngs=rngs))
    self.layer = nnx.List([_conv(w[0], w[0], 1, rngs=rngs), _relu,
                           _conv(w[0], 1, 1, rngs=rngs)])
    if self.dtype != jnp.float32:
      layers.set_compute_dtype(self, self.dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    layers.check_input(x, self.in_channels, TOTAL_STRIDE, 'GGLNet')
    with layers.fast_kernels_option(self.fast_kernels):
      return self._forward(x)

  def _forward(self, x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
      x = x.astype(jnp.float32)
    grad = gradient_magnitude(x)
    # A float64 input (with float64 parameters, under jax_enable_x64) runs in
    # float64 throughout: the tests' reference for ill-conditioned gradients.
    dtype = x.dtype if x.dtype == jnp.float64 else self.dtype
    out_dtype = jnp.promote_types(dtype, jnp.float32)
    x, grad = x.astype(dtype), grad.astype(dtype)
    main = grad if self.main_input == 'gradient' else x
    branch = {'gradient': grad, 'image': x, 'none': None}[self.supplementary]
    outs = self.stage(main, branch)
    feats = [getattr(self, f'lcl{i}')(o) for i, o in enumerate(outs, start=1)]
    out = feats[-1]
    for i in range(len(feats) - 1, 0, -1):
      out = getattr(self, f'sbam{i}')(out, feats[i - 1])
    return _apply(self.layer, out).astype(out_dtype)
