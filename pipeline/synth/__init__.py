"""A controlled synthetic action dataset, written as real H.264 MP4 videos plus an actrec manifest.

Why: a two-stream model should show on data we control that its spatial stream reads appearance and its temporal
stream reads motion. The classes are built so that neither stream alone can solve the task.

Classes (label order; ``classes.txt`` lists the names):

====  ================  ==================  =========================================================
label name              appearance          motion
====  ================  ==================  =========================================================
0     move_left         blob-textured box   translate left  (x decreases)
1     move_right        blob-textured box   translate right (x increases)
2     move_up           blob-textured box   translate up    (y decreases)
3     move_down         blob-textured box   translate down  (y increases)
4     rotate_cw         blob-textured box   spin clockwise as seen on screen
5     rotate_ccw        blob-textured box   spin anticlockwise
6     approach          blob-textured box   grow (the object comes nearer)
7     recede            blob-textured box   shrink (the object goes away)
8     shape_disc        blob-textured disc  orbit (circle around the frame centre)
9     shape_star        blob-textured star  orbit
10    texture_stripes   striped box         orbit
11    texture_checker   checkered box       orbit
====  ================  ==================  =========================================================

Classes 0-7 are four opposite motion pairs with one shared appearance: every pose is centred on mid-clip, so a
pair sweeps the same poses in opposite order and its frames, taken as a set, have the same distribution; only the
order (the motion) tells them apart. Classes 8-11 share one motion and differ only in shape or texture.

Nuisances make it non-trivial: a random smooth colour background, a random object texture and colours, a random
start offset, angle and size, a random base speed (``SceneParams.speed_px``) modulated by a sinusoid, camera jitter
(an AR(1) sub-pixel shake of the whole scene) and Gaussian pixel noise. Video ``i`` of every class draws the same
nuisances (from ``SeedSequence([seed, i, stream])``), so classes are paired: ``move_left_0003`` and
``move_right_0003`` differ only in direction, ``shape_disc_0003`` and ``shape_star_0003`` only in shape. Splits
are drawn per video index and shared by all classes, so they are stratified per class and the test videos'
nuisances never occur in training.

Defaults: 12 classes x 12 videos, 16 frames of 96x96 at 25 fps. TV-L1 dominates the demo pipeline and its cost
grows with the pixel count: OpenCV's CPU TV-L1 (default parameters) took 134 ms per 96x96 pair on the 2-core
development machine against about 215 ms at 112x112, so the 144 x 15 pairs take about 5 minutes. 96 is a multiple
of the 16-pixel H.264 macroblock (and even, as yuv420p needs), leaves a 3x3 map after a ResNet's stride 32, and
16 frames give 15 flows, enough for one 10-flow stack. Motion is 1-2.5 pixels per frame (rotation and zoom move the
object's edge by a similar amount), well within the +-20 px quantisation bound, and at the defaults the object
stays inside the frame.

Layout under ``out_dir``: ``videos/<class>/<class>_<iiii>.mp4``, ``manifest.csv`` (paths relative to ``videos/``,
video_id = file stem), ``classes.txt`` (one name per line, in label order) and ``synth.json`` (the options that fix
the video content, checked when a run is resumed).

Layout of the package: :mod:`.classes` (classes and scene constants), :mod:`.appearance` (masks, textures, the
sprite), :mod:`.nuisance` (random draws and poses), :mod:`.render` (frames), :mod:`.encode` (H.264 MP4) and
:mod:`.dataset` (splits, options and the dataset writer).
"""

from actrec.pipeline.synth.appearance import SHAPES, TEXTURES, make_sprite
from actrec.pipeline.synth.classes import (APPEARANCE_ONLY, CLASSES, MOTION_ONLY, Appearance, Motion, SceneParams,
                                           SynthClass)
from actrec.pipeline.synth.dataset import (DEFAULT_FPS, DEFAULT_FRAMES, DEFAULT_SIZE, DEFAULT_SPLIT_FRACTIONS,
                                           DEFAULT_VIDEOS_PER_CLASS, FORMAT_VERSION, SynthSummary, assign_splits,
                                           generate_synthetic_dataset, split_counts)
from actrec.pipeline.synth.encode import H264_ENCODERS, pick_h264_encoder, write_h264
from actrec.pipeline.synth.nuisance import Nuisance, draw_nuisance, object_poses
from actrec.pipeline.synth.render import render_video

__all__ = [
    "FORMAT_VERSION",
    "DEFAULT_VIDEOS_PER_CLASS",
    "DEFAULT_FRAMES",
    "DEFAULT_SIZE",
    "DEFAULT_FPS",
    "DEFAULT_SPLIT_FRACTIONS",
    "H264_ENCODERS",
    "Motion",
    "Appearance",
    "SynthClass",
    "CLASSES",
    "MOTION_ONLY",
    "APPEARANCE_ONLY",
    "SceneParams",
    "Nuisance",
    "SynthSummary",
    "SHAPES",
    "TEXTURES",
    "make_sprite",
    "draw_nuisance",
    "object_poses",
    "render_video",
    "pick_h264_encoder",
    "write_h264",
    "split_counts",
    "assign_splits",
    "generate_synthetic_dataset",
]
