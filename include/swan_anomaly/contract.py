"""The names every layer shares, in one light module (no OpenCV, torch or Airflow).

* classes: ``0`` = abnormal, ``1`` = normal; ``anomaly_score = softmax(logits)[0]``;
* the synthetic anomaly families by name (their code is in :mod:`swan_anomaly.anomalies`);
* the centre-biased crop that the ETL, training and serving all apply.

The DAG's Params, the Spark jobs and the model's config read these instead of keeping copies.

Example:
    >>> LABEL_NAMES[ABNORMAL], LABEL_NAMES[NORMAL]
    ('abnormal', 'normal')
    >>> "cutpaste" in FAMILY_NAMES
    True
"""

from __future__ import annotations

#: Class ids. The model's logit 0 is the anomaly class.
ABNORMAL, NORMAL = 0, 1
#: ``id2label`` of the model config and the names in reports.
LABEL_NAMES: dict[int, str] = {ABNORMAL: "abnormal", NORMAL: "normal"}
#: ``label2id`` of the model config.
LABEL_IDS: dict[str, int] = {name: label for label, name in LABEL_NAMES.items()}

#: The served output column of the novelty score (:mod:`swan_anomaly.novelty`), beside ``anomaly_score``.
NOVELTY_COLUMN = "novelty_score"

#: The ``family`` of a normal image in the label manifest.
NORMAL_FAMILY = "none"
#: The synthetic anomaly families, in the order reports list them.
FAMILY_NAMES: tuple[str, ...] = ("salt_pepper_polygons", "cutpaste", "perlin_texture", "occlusion", "local_blur", "color_shift")
#: Families used when a caller names none: all of them, so that training sees every kind of anomaly.
DEFAULT_FAMILIES: tuple[str, ...] = FAMILY_NAMES

#: Where the square crop sits in a frame: fraction of the free width left of it and of the free height above it.
#: The swans of the demo scene sit left of centre; the ETL, training, serving and anomaly placement agree on it.
CROP_BIAS_X = 0.4
CROP_BIAS_Y = 0.5
