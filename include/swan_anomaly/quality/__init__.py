"""The quality benchmark's material: footage from real photographs and anomaly kinds never trained on.

Used by ``bench/quality.py`` (and its tests), never by the pipeline itself.

Modules:

* ``footage``: :func:`render_photo_footage`, a virtual hand-held camera panning across a photo
  bundled in the scikit-image wheel; :data:`PHOTOS`, the benchmark's scenes; :func:`load_photo`.
* ``unseen``: :data:`UNSEEN_KINDS`, anomaly kinds disjoint from the training families
  (``foreign_object``, ``glare``, ``scratch``, ``pixelation``, ``tear``), with the families' call shape.

scikit-image (a dev/bench dependency) is imported only when a photo is loaded, so this package
imports without it.

Example:
    >>> sorted(UNSEEN_KINDS)
    ['foreign_object', 'glare', 'pixelation', 'scratch', 'tear']
    >>> PHOTOS
    ('coffee', 'rocket', 'motorcycle_left')
"""

from swan_anomaly.quality.footage import BUNDLED_PHOTOS, PHOTOS, load_photo, render_photo_footage
from swan_anomaly.quality.unseen import FOREIGN_OBJECTS, UNSEEN_KINDS, foreign_object, glare, pixelation, scratch, tear

__all__ = [
    "BUNDLED_PHOTOS",
    "FOREIGN_OBJECTS",
    "PHOTOS",
    "UNSEEN_KINDS",
    "foreign_object",
    "glare",
    "load_photo",
    "pixelation",
    "render_photo_footage",
    "scratch",
    "tear",
]
