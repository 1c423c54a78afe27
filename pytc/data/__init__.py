"""Training data: volumes and their checks (:mod:`.volumes`), intensity normalisation and statistics
(:mod:`.intensity`), label → target channels (:mod:`.targets`), augmentation (:mod:`.augment`) and
patch sampling / validation volumes (:mod:`.dataset`)."""
