"""SynthVI: a procedural visible-infrared person re-identification data set.

The real benchmarks cannot be downloaded here, yet the pipeline, its tests and its demo need data
that carries the problem DMDL solves. SynthVI is drawn deterministically from a seed and written
in SYSU-MM01's layout, so the SYSU-MM01 reader and protocol run on it unchanged:

    OUT/cam1..cam6/<pid:04d>/<n:04d>.jpg   cams 1, 2, 4, 5 visible; 3, 6 infrared (grey, 3 channels)
    OUT/exp/{train,val,test}_id.txt        one line of comma-separated ids each
    OUT/synthvi.json                       generator version, config, camera parameters, counts
    OUT/synthvi_identities.json            every identity's drawn attributes

Generative model
----------------
Identity (one random stream per pid). Cues both modalities render:
  * body: stature, head radius, shoulder and hip width, leg and arm length (body-height units);
  * clothing shape: long or short sleeves, trousers or shorts, a coat flaring past the hips or not,
    long or short hair;
  * texture: a top and a bottom garment, each plain, striped (0/45/90/135 degrees) or checked,
    with its own period (0.08-0.16 body heights) and contrast; the pattern pulls a light garment
    towards black and a dark one towards white, in colour and heat alike;
  * accessories: hat with a brim, shoulder bag (left or right) with its strap, backpack wider than
    the shoulders, each present with some probability.
Version 3 sized these shape cues for the demo's 64 x 32 (arms, hats, bags and backpacks a pixel or
two wider, long hair down to the shoulder blades, wider body-width ranges, less camera and image
scale jitter, coats), so that a silhouette tells identities apart as well as a pattern does.
Cues of one modality only:
  * visible colour: top, hat, bag and backpack from a 12-colour palette, bottoms from 6 of those,
    skin tone and hair colour from small sets. Identities share colours, so colour is a strong but
    imperfect cue.
  * infrared heat, per garment and accessory: lo + (hi - lo) * (w * luminance(colour) + (1 - w) * u),
    u drawn on its own (w = ir_luminance_weight, 0.2 by default; the modality bias is 1 - w:
    `data.synthvi_bias`, `dmdl synth --bias`). Visible clothes keep 0.3 + 0.7 * bias of their
    colour's saturation, so the dial weakens the colour cue too. The infrared value cannot be read off the visible
    colour, so a colour-based feature does not transfer across modalities: colour is the modality
    shortcut. Skin is hottest, clothes cooler, accessories and shoes coolest.
Camera (one stream per camera): background (vertical gradient, floor, wall panels, low-frequency
texture; coloured in visible cameras, grey in infrared ones), illumination (gain, gamma and, for
visible cameras, a colour cast), viewpoint (shear), distance (scale), blur and noise (the infrared
cameras blurrier and noisier).
Image (one stream per (pid, camera, index)): arm and leg angles, a small rotation, a horizontal
flip, scale and position jitter, background phase and brightness, sensor noise.

Rendering: body parts are polygons in body coordinates (x right, y down, head top 0, soles 1),
mapped to pixels by one affine transform and filled into a part-label map at twice the output
resolution; colours or heats are looked up per part, patterns are evaluated in body coordinates
(so they move with the person), the person is composed over the background, averaged down 2x,
lit, blurred, noised and stored as JPEG of fixed quality.

Every draw comes from a numpy Generator seeded by (seed, purpose, pid, camera, index), so a file's
bytes depend neither on the order of generation nor on the number of worker processes.
"""

from dmdl_dist.data.synthvi.model import (
    BACKGROUND,
    DEFAULT,
    GENERATOR_VERSION,
    INFRARED_CAMS,
    PALETTE,
    SKIN,
    TINY,
    TOP,
    VISIBLE_CAMS,
    Camera,
    Identity,
    SynthVIConfig,
    camera,
    camera_plan,
    identity,
    sized,
    split_ids,
)
from dmdl_dist.data.synthvi.render import Rendering, render
from dmdl_dist.data.synthvi.writer import generate

__all__ = [
    "BACKGROUND", "DEFAULT", "GENERATOR_VERSION", "INFRARED_CAMS", "PALETTE", "SKIN", "TINY", "TOP", "VISIBLE_CAMS",
    "Camera", "Identity", "Rendering", "SynthVIConfig", "camera", "camera_plan", "generate", "identity", "render",
    "sized", "split_ids",
]
