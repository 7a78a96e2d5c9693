"""Exception types: every user-facing failure is one of these, saying what to do about it."""


class TesseractFLError(Exception):
    """Base class for all errors raised on purpose by tesseract-fl."""


class ConfigError(TesseractFLError, ValueError):
    """An experiment configuration is invalid (names the bad key and the allowed values)."""


class DatasetError(TesseractFLError):
    """A dataset file is missing, truncated or malformed, or a fetch step failed."""


class UpdateError(TesseractFLError, ValueError):
    """A client update matrix is malformed (wrong shape, dtype, NaN/Inf)."""


class StoreError(TesseractFLError):
    """The results store cannot be opened or written."""


class RunBusyError(StoreError):
    """Another live process is running the same run into the same store."""


class DivergedError(UpdateError):
    """The global model diverged: its update, its parameters or every benign client's loss
    became non-finite. The runner records this as a result (the run's ``diverged_at``)."""

    def __init__(self, round_: int, what: str) -> None:
        super().__init__(f"round {round_}: the global model diverged ({what})")
        self.round = round_
