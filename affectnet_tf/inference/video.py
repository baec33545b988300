"""Videos: streamed sampled frames, faces per frame in batches, and the per-video box cache.

The implementation lives in :mod:`tfds_affectnet.video_frames` (shared with the ``afew`` and ``vgaf``
builders, since ``tfds_affectnet`` never imports ``affectnet_tf``); this module is its public home.

For example:

```python
from affectnet_tf.inference.faces import FaceCropper
from affectnet_tf.inference.video import BoxCache, FrameSampler, VideoStats, iter_video_faces

stats = VideoStats()
for frame in iter_video_faces("clip.avi", FaceCropper(), FrameSampler(fps=5),
                              cache=BoxCache("boxes/"), stats=stats):
    print(frame.index, frame.faces.boxes)
print(stats.frames_without_face, stats.frames_detected)
```
"""

from tfds_affectnet.video_frames import (
    VIDEO_EXTENSIONS,
    BoxCache,
    FaceReport,
    FrameFaces,
    FrameSampler,
    UnreadableVideoError,
    VideoStats,
    iter_frames,
    iter_video_faces,
    video_properties,
)

__all__ = [
    "VIDEO_EXTENSIONS",
    "BoxCache",
    "FaceReport",
    "FrameFaces",
    "FrameSampler",
    "UnreadableVideoError",
    "VideoStats",
    "iter_frames",
    "iter_video_faces",
    "video_properties",
]
