"""Config overrides shared by the tests that train a tiny run of a synthetic config."""

TINY_RUN = [
    ("model.image_size", "32"),
    ("data.num_train", "16"),
    ("data.num_test", "8"),
    ("train.batch_size", "8"),
    ("train.eval_batch_size", "8"),
]
