"""Video files in and out, through PyAV (the `video` extra: `pip install -e ".[video]"`).

PyAV's wheels carry FFmpeg's libraries, so nothing is needed from the system.
Frames are read as RGB uint8 and written as H.264 (MPEG-4 Part 2 where the
FFmpeg build lacks an H.264 encoder). PyAV is imported on first use only.
"""

from __future__ import annotations

import fractions
from typing import Iterator

import numpy as np

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg',
                    '.wmv', '.flv', '.ts')
INSTALL_HINT = 'Video needs PyAV: pip install -e ".[video]" (or pip install av).'


class VideoError(ValueError):
  """A video file that cannot be read or written (named in the message)."""


def available() -> bool:
  """Whether PyAV is installed."""
  try:
    import av  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def _av():
  try:
    import av  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(INSTALL_HINT) from e
  return av


def _errors():
  av = _av()
  return (av.error.FFmpegError, OSError, ValueError, EOFError)


def probe(path: str) -> tuple[int | None, float]:
  """(frame count or None when the container does not say, frames per second)."""
  av = _av()
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise VideoError(f'cannot read {path}: no video stream')
      stream = container.streams.video[0]
      rate = stream.average_rate or stream.guessed_rate or 25
      return (int(stream.frames) or None), float(rate)
  except _errors() as e:
    if isinstance(e, VideoError):
      raise
    raise VideoError(f'cannot read {path}: {e}') from e


def read_frames(path: str) -> Iterator[np.ndarray]:
  """The frames of the first video stream as (H, W, 3) uint8 RGB.

  Raises VideoError (naming the file and the frame) when the file cannot be
  opened or decoding fails part-way; the frames before it have been yielded.
  """
  av = _av()
  index = 0
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise VideoError(f'cannot read {path}: no video stream')
      for frame in container.decode(container.streams.video[0]):
        yield frame.to_ndarray(format='rgb24')
        index += 1
  except _errors() as e:
    if isinstance(e, VideoError):
      raise
    where = f' after frame {index - 1}' if index else ''
    raise VideoError(f'cannot read {path}{where}: {e}') from e


class VideoWriter:
  """Writes (H, W, 3) uint8 RGB frames to a video file (a context manager).

  Odd sides are padded by one pixel (the yuv420p format needs even ones).
  """

  def __init__(self, path: str, fps: float = 25.0):
    self.path = path
    self.fps = fps
    self._container = None
    self._stream = None

  def _open(self, height: int, width: int) -> None:
    av = _av()
    self._container = av.open(self.path, mode='w')
    rate = fractions.Fraction(self.fps).limit_denominator(1001)
    for codec in ('h264', 'mpeg4'):
      try:
        self._stream = self._container.add_stream(codec, rate=rate)
        break
      except (av.error.FFmpegError, ValueError):
        continue
    else:
      raise VideoError(f'cannot write {self.path}: no H.264 or MPEG-4 encoder in this '
                       'FFmpeg build')
    self._stream.width = width + width % 2
    self._stream.height = height + height % 2
    self._stream.pix_fmt = 'yuv420p'

  def write(self, frame: np.ndarray) -> None:
    av = _av()
    frame = np.asarray(frame, np.uint8)
    if self._container is None:
      self._open(*frame.shape[:2])
    h, w = frame.shape[:2]
    pad = ((0, self._stream.height - h), (0, self._stream.width - w), (0, 0))
    if any(p[1] for p in pad):
      frame = np.pad(frame, pad, mode='edge')
    image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format='rgb24')
    for packet in self._stream.encode(image):
      self._container.mux(packet)

  def close(self) -> None:
    if self._container is None:
      return
    for packet in self._stream.encode():
      self._container.mux(packet)
    self._container.close()
    self._container = None

  def __enter__(self) -> 'VideoWriter':
    return self

  def __exit__(self, *exc) -> None:
    self.close()
