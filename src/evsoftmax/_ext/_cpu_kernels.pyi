def ev_softmax_rows(
    x: int,
    y: int,
    rows: int,
    length: int,
    itemsize: int,
    ratio: float,
    log_ratio: float,
    log: bool,
    threads: int,
    parallel: int,
    /,
) -> None: ...
def xla_ffi_handler() -> object: ...
