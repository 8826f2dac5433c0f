def forward_rows(
    op: int,
    x: int,
    y: int,
    rows: int,
    length: int,
    itemsize: int,
    alpha: float,
    n_iter: int,
    threads: int,
    parallel: int,
    /,
) -> None: ...
def vjp_rows(
    p: int,
    g: int,
    out: int,
    rows: int,
    length: int,
    itemsize: int,
    alpha: float,
    threads: int,
    parallel: int,
    /,
) -> None: ...
def xla_ffi_handler() -> object: ...
def xla_ffi_vjp_handler() -> object: ...
