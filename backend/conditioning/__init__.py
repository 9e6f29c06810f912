"""What the MMVDM sees: the face crop and the conditioning maps (paper §3.2 and S2.1).

* :mod:`.crop`: square head boxes 25 % larger than the projected head, smoothed over time;
  image cropping with white padding and an out-crop mask, consistent with ``Camera.cropped``.
* :mod:`.maps`: the stacked conditioning tensor at latent resolution and its channel table
  :data:`CHANNELS` (``NUM_CHANNELS`` channels).
"""

from .crop import CROP_SCALE, crop_camera, crop_image, crop_images, face_crop_boxes, head_boxes, smooth_boxes
from .maps import (
    CHANNEL_SLICES,
    CHANNELS,
    EXPRESSION_SCALE,
    LATENT_DOWNSAMPLE,
    NUM_CHANNELS,
    POSE_FREQUENCIES,
    HeadGeometry,
    canonical_coordinates,
    decode_pose,
    head_geometry,
    latent_frame_indices,
    pose_encoding,
    ray_maps,
    reference_conditioning,
    video_conditioning,
    visualize,
)

__all__ = [
    "CHANNELS",
    "CHANNEL_SLICES",
    "CROP_SCALE",
    "EXPRESSION_SCALE",
    "LATENT_DOWNSAMPLE",
    "NUM_CHANNELS",
    "POSE_FREQUENCIES",
    "HeadGeometry",
    "canonical_coordinates",
    "crop_camera",
    "crop_image",
    "crop_images",
    "decode_pose",
    "face_crop_boxes",
    "head_boxes",
    "head_geometry",
    "latent_frame_indices",
    "pose_encoding",
    "ray_maps",
    "reference_conditioning",
    "smooth_boxes",
    "video_conditioning",
    "visualize",
]
