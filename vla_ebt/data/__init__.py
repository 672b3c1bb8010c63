"""Training data: dataset registry (:mod:`.oxe_configs`) and the streaming loader (:mod:`.stream`)."""
