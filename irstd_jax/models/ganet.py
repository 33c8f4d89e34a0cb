"""GaNet ("Gradient is all you need"; the official code names it DATransNet).

A residual U-Net (base width 16, four poolings) whose four skip connections go
through a GradFormer and whose bottleneck goes through GFEM; the decoder's up
blocks gate the upsampled features with a sigmoid map of the skip input.

Every module mirrors the official PyTorch module's attribute names (see
`irstd_jax.convert`), and the forward pass follows the official order of
operations, including its quirks: the GradFormer's heads are mixed by a raw
memory reshape (`view`) of a stacked tensor, and the attention is scaled by the
`img_size` given at construction, not by the input's size. The model returns
logits; the official network ends with a sigmoid, which is `jax.nn.sigmoid`
of our output.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from irstd_jax.models import layers

# The eight neighbours, as (row, col) in a 3x3 window, in the official order:
# four from the top-left clockwise to the right, then their point reflections.
_NEIGHBOURS = ((0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0))
DIFFERENCE_OPS = ('folded', 'slices', 'conv')


@functools.lru_cache(maxsize=32)
def _difference_kernel(channels: int) -> np.ndarray:
  """HWIO kernel (3, 3, 1, 8C) of the fixed centre-minus-neighbour conv."""
  kernel = np.zeros((3, 3, 1, channels, 8), np.float32)
  kernel[1, 1] = 1.0
  for k, (row, col) in enumerate(_NEIGHBOURS):
    kernel[row, col, 0, :, k] -= 1.0
  return kernel.reshape(3, 3, 1, channels * 8)


def _folded_kernel(projection: jax.Array, channels: int) -> jax.Array:
  """HWIO (3, 3, C, N) kernel equal to the 8 differences followed by `projection`.

  `projection` (8C, N) maps the differences (channel k * C + c: input channel
  c minus neighbour k) to N outputs. It is linear in the 3x3 neighbourhood:
  the centre tap is the sum of the eight (C, N) slabs, neighbour k's tap is
  minus slab k.
  """
  slabs = projection.reshape(8, channels, projection.shape[-1])
  taps = {position: -slabs[k] for k, position in enumerate(_NEIGHBOURS)}
  taps[(1, 1)] = jnp.sum(slabs, axis=0)
  return jnp.stack([taps[(row, col)] for row in range(3) for col in range(3)]).reshape(
      3, 3, channels, projection.shape[-1])


def _l2_normalize(x: jax.Array, axis: int) -> jax.Array:
  """`torch.nn.functional.normalize`: x / max(||x||, 1e-12), NaN-free gradient."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, 1e-24))


def _conv1x1_kernel(conv: nnx.Conv) -> jax.Array:
  """The (in, out) matrix of a bias-free 1x1 convolution."""
  return conv.kernel[...][0, 0]


class ResBlock(nnx.Module):
  """Two 3x3 conv + BN with a LeakyReLU and a (projected) residual (`Res_block`)."""

  def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
    self.conv1 = layers.Conv2d(in_channels, out_channels, 3, padding=1, rngs=rngs)
    self.bn1 = layers.BatchNorm2d(out_channels, rngs=rngs)
    self.conv2 = layers.Conv2d(out_channels, out_channels, 3, padding=1, rngs=rngs)
    self.bn2 = layers.BatchNorm2d(out_channels, rngs=rngs)
    if in_channels != out_channels:
      self.shortcut = nnx.List([
          layers.Conv2d(in_channels, out_channels, 1, rngs=rngs),
          layers.BatchNorm2d(out_channels, rngs=rngs)])
    else:
      self.shortcut = None

  def __call__(self, x: jax.Array) -> jax.Array:
    residual = x
    if self.shortcut is not None:
      residual = self.shortcut[1](self.shortcut[0](x))
    out = jax.nn.leaky_relu(self.bn1(self.conv1(x)), 0.01)
    out = self.bn2(self.conv2(out))
    return jax.nn.leaky_relu(out + residual, 0.01)


class CBN(nnx.Module):
  """3x3 conv, BN, ReLU."""

  def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
    self.conv = layers.Conv2d(in_channels, out_channels, 3, padding=1, rngs=rngs)
    self.norm = layers.BatchNorm2d(out_channels, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.norm(self.conv(x)))


class UpBlockAttention(nnx.Module):
  """Upsample x2, gate by sigmoid(1x1 conv(skip input)), concat, two CBNs."""

  def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
    half = in_channels // 2
    # pylint: disable-next=invalid-name (the official name, for the converter)
    self.nConvs = nnx.List([CBN(in_channels, out_channels, rngs=rngs),
                            CBN(out_channels, out_channels, rngs=rngs)])
    self.sattn = nnx.List([layers.Conv2d(half, half, 1, rngs=rngs)])

  def __call__(self, d: jax.Array, skip: jax.Array, xin: jax.Array) -> jax.Array:
    # nn.Upsample(mode='bilinear') has align_corners=False.
    d = layers.upsample_bilinear(d, 2, align_corners=False)
    d = jax.nn.sigmoid(self.sattn[0](xin)) * d
    x = jnp.concatenate([skip, d], axis=-1)
    for cbn in self.nConvs:
      x = cbn(x)
    return x


class GradFormer(nnx.Module):
  """Gradient attention on a skip connection (`ExpansionContrastModule`).

  Per head (one per dilation d): the eight centre-minus-neighbour differences
  at distance d; queries from the input, keys and values from the
  differences (1x1 convs); L2-normalised over pixels,
  a (C/heads x 8C/heads) attention matrix per head, divided by
  sqrt(area), instance-normalised, soft-maxed, applied to the values; then a
  1x1 conv + BN + ReLU. `area` is (img_size / stride)^2 fixed at construction,
  as in the official code (it only matters through the instance norm's eps).

  `difference_op` chooses how the keys and values are computed, with equal
  results up to float rounding: 'folded' (default) folds the differences into
  the key / value weights, one dense 3x3 dilated convolution per head, so
  nothing of 8C channels is materialised; 'slices' takes the differences as
  shifted slices of the padded input, then a 1x1 projection; 'conv' takes
  them with the official fixed grouped dilated convolution. On the CPU,
  'folded' is the fastest for training and inference (README, Performance).
  """

  def __init__(self, channels: int, width: int, height: int,
               dilations: Sequence[int], difference_op: str = 'folded', *,
               rngs: nnx.Rngs):
    if difference_op not in DIFFERENCE_OPS:
      raise ValueError(
          f'difference_op must be one of {DIFFERENCE_OPS}, got {difference_op!r}.')
    self.difference_op = difference_op
    num_heads = len(dilations)
    if channels % num_heads:
      raise ValueError(
          f'GradFormer with {channels} channels cannot split them into '
          f'{num_heads} heads (dilations={tuple(dilations)}); the official code '
          'needs the channel count divisible by the number of dilations.')
    self.channels = channels
    self.dilations = tuple(int(d) for d in dilations)
    self.area = width * height
    hidden = channels // num_heads
    self.query_convs = nnx.List([
        layers.Conv2d(channels, hidden, 1, bias=False, rngs=rngs)
        for _ in dilations])
    self.key_convs = nnx.List([
        layers.Conv2d(8 * channels, 8 * hidden, 1, bias=False, rngs=rngs)
        for _ in dilations])
    self.value_convs = nnx.List([
        layers.Conv2d(8 * channels, 8 * hidden, 1, bias=False, rngs=rngs)
        for _ in dilations])
    self.out_conv = nnx.List([
        layers.Conv2d(channels, channels, 1, bias=False, rngs=rngs),
        layers.BatchNorm2d(channels, rngs=rngs)])

  def differences(self, x: jax.Array, dilation: int) -> jax.Array:
    """(B, H, W, 8C): x minus its 8 neighbours at `dilation`, zero padded.

    Channel `k * C + c` holds input channel c minus neighbour k, the official
    order. With 'conv', the official fixed grouped dilated convolution
    (whose transpose dominates a GaNet train step on the CPU); otherwise
    shifted slices of the padded input, which XLA fuses into one loop.
    """
    _, h, w, c = x.shape
    d = dilation
    if self.difference_op == 'conv':
      # One grouped dilated convolution: group c gives channels c * 8 + k.
      kernel = jnp.asarray(_difference_kernel(c), x.dtype)
      diffs = jax.lax.conv_general_dilated(
          x, kernel, window_strides=(1, 1), padding=((d, d), (d, d)),
          rhs_dilation=(d, d), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
          feature_group_count=c)
      return diffs.reshape(*diffs.shape[:-1], c, 8).swapaxes(-1, -2).reshape(
          diffs.shape)
    padded = jnp.pad(x, ((0, 0), (d, d), (d, d), (0, 0)))
    return jnp.concatenate(
        [x - padded[:, row * d:row * d + h, col * d:col * d + w, :]
         for row, col in _NEIGHBOURS], axis=-1)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    num_heads = len(self.dilations)
    hidden = c // num_heads
    pixels = h * w

    # Queries of all heads in one matmul. The official code stacks per-head
    # results as (B, hidden, heads, H, W) and reinterprets that memory as
    # (B, heads, hidden, H*W); in NHWC that is a plain reshape of
    # (..., hidden, heads) ordered channels, so the weights are arranged so.
    wq = jnp.stack([_conv1x1_kernel(q) for q in self.query_convs], axis=-1).astype(x.dtype)
    queries = jnp.einsum('bhwc,cn->bhwn', x, wq.reshape(c, hidden * num_heads))
    queries = queries.reshape(b, pixels, num_heads, hidden)

    keys, values = [], []
    for dilation, key_conv, value_conv in zip(
        self.dilations, self.key_convs, self.value_convs):
      wkv = jnp.concatenate(
          [_conv1x1_kernel(key_conv), _conv1x1_kernel(value_conv)], axis=-1).astype(x.dtype)
      if self.difference_op == 'folded':
        kv = jax.lax.conv_general_dilated(
            x, _folded_kernel(wkv, c), window_strides=(1, 1),
            padding=((dilation, dilation), (dilation, dilation)),
            rhs_dilation=(dilation, dilation),
            dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      else:
        kv = jnp.einsum('bhwc,cn->bhwn', self.differences(x, dilation), wkv)
      keys.append(kv[..., :8 * hidden])
      values.append(kv[..., 8 * hidden:])
    # The same memory reinterpretation as for the queries.
    keys = jnp.stack(keys, axis=-1).reshape(b, pixels, num_heads, 8 * hidden)
    values = jnp.stack(values, axis=-1).reshape(b, pixels, num_heads, 8 * hidden)

    # Normalisations and softmax in float32 (no-op casts in the float32 path).
    queries = _l2_normalize(queries.astype(jnp.float32), axis=1)
    keys = _l2_normalize(keys.astype(jnp.float32), axis=1)
    scores = jnp.einsum('bpni,bpnj->bnij', queries, keys) / math.sqrt(self.area)
    # nn.InstanceNorm2d(heads): per (sample, head), biased variance, eps 1e-5.
    mean = jnp.mean(scores, axis=(2, 3), keepdims=True)
    var = jnp.mean(jnp.square(scores - mean), axis=(2, 3), keepdims=True)
    scores = (scores - mean) * jax.lax.rsqrt(var + 1e-5)
    weights = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
    out = jnp.einsum('bnij,bpnj->bpni', weights, values).reshape(b, h, w, c)
    return jax.nn.relu(self.out_conv[1](self.out_conv[0](out)))


class ChannelAttention(nnx.Module):
  """sigmoid(1x1 conv(global average)), as the ChannelAttention GaNet imports."""

  def __init__(self, in_planes: int, *, rngs: nnx.Rngs):
    self.fc1 = layers.Conv2d(in_planes, in_planes, 1, bias=False, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.sigmoid(self.fc1(jnp.mean(x, axis=(1, 2), keepdims=True)))


class NonLocalBlock(nnx.Module):
  """Embedded-Gaussian non-local block with 2x2 max-pooled keys / values.

  As the official `_NonLocalBlockND` (sub_sample, bn_layer), it returns
  W(y) without the residual. Its BN scale starts at zero, as in torch.
  """

  def __init__(self, in_channels: int, inter_channels: int, *, rngs: nnx.Rngs):
    self.g = nnx.List([layers.Conv2d(in_channels, inter_channels, 1, rngs=rngs)])
    self.theta = layers.Conv2d(in_channels, inter_channels, 1, rngs=rngs)
    self.phi = nnx.List([layers.Conv2d(in_channels, inter_channels, 1, rngs=rngs)])
    bn = layers.BatchNorm2d(in_channels, rngs=rngs)
    bn.scale[...] = jnp.zeros_like(bn.scale[...])
    # pylint: disable-next=invalid-name (the official name, for the converter)
    self.W = nnx.List([layers.Conv2d(inter_channels, in_channels, 1, rngs=rngs), bn])

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, _ = x.shape
    g = layers.max_pool(self.g[0](x), 2)
    phi = layers.max_pool(self.phi[0](x), 2)
    theta = self.theta(x)
    inter = theta.shape[-1]
    g = g.reshape(b, -1, inter)
    phi = phi.reshape(b, -1, inter)
    theta = theta.reshape(b, h * w, inter)
    attn = jax.nn.softmax(jnp.einsum('bpc,bqc->bpq', theta, phi).astype(jnp.float32),
                          axis=-1).astype(g.dtype)
    y = jnp.einsum('bpq,bqc->bpc', attn, g).reshape(b, h, w, inter)
    return self.W[1](self.W[0](y))


class GFEM(nnx.Module):
  """Global feature extraction at the bottleneck (non-local + pooled branch)."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.ca = ChannelAttention(channels, rngs=rngs)
    self.sp = NonLocalBlock(channels, channels // 8, rngs=rngs)
    self.sattn = nnx.List([layers.Conv2d(channels, 1, 1, rngs=rngs)])
    self.tra_conv_1 = layers.Conv2d(channels, channels, 1, rngs=rngs)
    self.tra_conv_2 = layers.Conv2d(channels, channels, 3, padding=1, rngs=rngs)
    self.out_conv = layers.Conv2d(channels, channels, 3, padding=1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    spat = self.sp(x)
    down = self.ca(spat) * layers.max_pool(x, 2)
    down = (layers.upsample_bilinear(down, 2, align_corners=False)
            * jax.nn.sigmoid(self.sattn[0](x)))
    out = self.tra_conv_1(spat) + self.tra_conv_2(down)
    return self.out_conv(out)


class GaNet(nnx.Module):
  """GaNet (official name DATransNet). NHWC in, logits (B, H, W, 1) out.

  Args:
    in_channels: input channels (1 for infrared images).
    dilations: one GradFormer head per dilation (the official model: (1, 3)).
    use_gradformer: GradFormer on the four skip connections; off, the skips
      are the encoder features themselves.
    use_gfem: GFEM at the bottleneck; off, the bottleneck is the last encoder
      stage. Both off is the plain U-Net of the paper's Table II.
    img_size: the training image size; GradFormer at stride s divides its
      attention by img_size / s (the official constructor argument).
    base_channels: the width of the first stage (16 in the official code).
    difference_op: how GradFormer computes its keys and values: 'folded'
      (fastest), 'slices' or 'conv' (see GradFormer); equal up to rounding.
    dtype: compute dtype; None / 'float32' is the exact (parity) path,
      'bfloat16' is mixed precision for GPUs and TPUs (parameters, optimizer
      state, batch-norm statistics, normalisations and softmax stay float32;
      the logits are float32).
    fast_kernels: True / False take or avoid the CPU speed kernels
      (`layers.use_fast_kernels`); None (default) follows that switch.
    rngs: initialisation RNGs.

  Input height and width must be multiples of 32 with GFEM (it pools the
  stride-16 bottleneck once more and upsamples back) and of 16 without; use
  `irstd_jax.models.apply_padded` for other sizes.
  """

  # Official parameters that the official forward pass never uses.
  TORCH_UNUSED = (r'encoder5\..*', r'decoder5\..*', r'se_block\..*',
                  r'sp_block\..*', r'contras\d\.scale')

  def __init__(self, in_channels: int = 1, dilations: Sequence[int] = (1, 3),
               use_gradformer: bool = True, use_gfem: bool = True,
               img_size: int = 256, base_channels: int = 16,
               difference_op: str = 'folded', dtype=None,
               fast_kernels: bool | None = None, *, rngs: nnx.Rngs):
    dilations = tuple(int(d) for d in dilations)
    self.dtype = layers.compute_dtype(dtype)
    self.fast_kernels = layers.check_fast_kernels(fast_kernels)
    if not dilations or min(dilations) < 1:
      raise ValueError(f'dilations must be positive integers, got {dilations}.')
    if img_size < 8:
      raise ValueError(f'img_size must be at least 8, got {img_size}.')
    self.in_channels = in_channels
    self.multiple = 32 if use_gfem else 16
    ch = base_channels
    self.inc = nnx.List([ResBlock(in_channels, ch, rngs=rngs)])
    self.encoder1 = nnx.List([ResBlock(ch, ch * 2, rngs=rngs)])
    self.encoder2 = nnx.List([ResBlock(ch * 2, ch * 4, rngs=rngs)])
    self.encoder3 = nnx.List([ResBlock(ch * 4, ch * 8, rngs=rngs)])
    self.encoder4 = nnx.List([ResBlock(ch * 8, ch * 8, rngs=rngs)])
    if use_gradformer:
      def gradformer(scale):
        size = img_size // scale
        return GradFormer(ch * scale, size, size, dilations,
                          difference_op=difference_op, rngs=rngs)
      self.contras1 = gradformer(1)
      self.contras2 = gradformer(2)
      self.contras3 = gradformer(4)
      self.contras4 = gradformer(8)
    else:
      self.contras1 = self.contras2 = self.contras3 = self.contras4 = None
    self.GFEM = GFEM(ch * 8, rngs=rngs) if use_gfem else None  # pylint: disable=invalid-name
    self.decoder4 = UpBlockAttention(ch * 16, ch * 4, rngs=rngs)
    self.decoder3 = UpBlockAttention(ch * 8, ch * 2, rngs=rngs)
    self.decoder2 = UpBlockAttention(ch * 4, ch, rngs=rngs)
    self.decoder1 = UpBlockAttention(ch * 2, ch, rngs=rngs)
    self.outc = layers.Conv2d(ch, 1, 1, rngs=rngs)
    if self.dtype != jnp.float32:
      layers.set_compute_dtype(self, self.dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    layers.check_input(x, self.in_channels, self.multiple, 'GaNet')
    with layers.fast_kernels_option(self.fast_kernels):
      return self._forward(x)

  def _forward(self, x: jax.Array) -> jax.Array:
    x = jnp.asarray(x, self.dtype)

    def stage(blocks, h):
      for block in blocks:
        h = block(h)
      return h

    x1 = stage(self.inc, x)
    x2 = stage(self.encoder1, layers.max_pool(x1, 2))
    x3 = stage(self.encoder2, layers.max_pool(x2, 2))
    x4 = stage(self.encoder3, layers.max_pool(x3, 2))
    d5 = stage(self.encoder4, layers.max_pool(x4, 2))
    skips = [x1, x2, x3, x4]
    if self.contras1 is not None:
      contras = (self.contras1, self.contras2, self.contras3, self.contras4)
      skips = [m(s) for m, s in zip(contras, skips)]
    c1, c2, c3, c4 = skips
    if self.GFEM is not None:
      d5 = self.GFEM(d5)
    d4 = self.decoder4(d5, c4, x4)
    d3 = self.decoder3(d4, c3, x3)
    d2 = self.decoder2(d3, c2, x2)
    return self.outc(self.decoder1(d2, c1, x1)).astype(jnp.float32)
