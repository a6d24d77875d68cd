"""Constants of the study in one place (see ``shared/reference/paper-protocol.md``).

Units are given in the names or the comments: ``_HZ`` for sampling rates,
``_SAMPLES`` for lengths in samples.
"""

from __future__ import annotations

# --- Icentia11k -------------------------------------------------------------
ICENTIA_FS_HZ = 250
ICENTIA_SEGMENT_SAMPLES = 2**20 + 1  # 1,048,577 samples, about 70 min
ICENTIA_SEGMENTS_PER_PATIENT = 50
ICENTIA_NUM_PATIENTS = 11_000

# Beat classes: index = torrent ``btype`` index; WFDB symbol in the PhysioNet release.
BEAT_CLASSES = ("undefined", "normal", "pac", "aberrated", "pvc")
BEAT_UNDEFINED, BEAT_NORMAL, BEAT_PAC, BEAT_ABERRATED, BEAT_PVC = range(5)
ICENTIA_BEAT_SYMBOLS = {"Q": BEAT_UNDEFINED, "N": BEAT_NORMAL, "S": BEAT_PAC, "a": BEAT_ABERRATED, "V": BEAT_PVC}

# Rhythm classes: index = torrent ``rtype`` index; WFDB aux note on ``+`` annotations.
RHYTHM_CLASSES = ("undefined", "end", "noise", "nsr", "af", "afl")
RHYTHM_UNDEFINED, RHYTHM_END, RHYTHM_NOISE, RHYTHM_NSR, RHYTHM_AF, RHYTHM_AFL = range(6)

# Heart-rate classes of the heart-rate pretext task, in the authors' index order
# (bpm < 60 bradycardia, 60-100 normal, > 100 tachycardia, fewer than 2 complete beats noise).
HEART_RATE_CLASSES = ("tachycardia", "bradycardia", "normal", "noise")
BRADYCARDIA_BPM = 60.0
TACHYCARDIA_BPM = 100.0

# --- PhysioNet/CinC Challenge 2017 -----------------------------------------
CINC_FS_HZ = 300
CINC_CLASSES = ("N", "A", "O", "~")  # Normal, AF, Other rhythm, Noisy
CINC_CLASS_NAMES = ("normal", "af", "other", "noisy")
CINC_ADC_GAIN = 1000.0  # adu per mV in the CinC headers

# Authors' fine-tuning input: resample 300 -> 250 Hz, last 16,384 samples (65.5 s), zero-padded in front.
PAPER_FINETUNE_FS_HZ = 250
PAPER_FINETUNE_SAMPLES = 16_384

# --- Optimiser of the study -------------------------------------------------
PAPER_ADAM = {"lr": 1e-3, "betas": (0.9, 0.98), "eps": 1e-9}

# --- Global pooling of the models' last feature map -------------------------
# "mean" over every step (the study), "masked" over the steps on real signal, "max" each feature's
# largest value over every step (ecgtl.models.resnet1d; FinetuneConfig.pooling; model cards).
POOLINGS = ("mean", "masked", "max")
