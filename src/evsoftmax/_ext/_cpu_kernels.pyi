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
def ev_softmax_strided(
    x: int,
    mask: int,
    y: int,
    shape: tuple[int, ...],
    x_strides: tuple[int, ...],
    mask_strides: tuple[int, ...],
    y_strides: tuple[int, ...],
    axis: int,
    dtype: int,
    ratio: float,
    log_ratio: float,
    log: bool,
    threads: int,
    parallel: int,
    scan: bool = ...,
    /,
) -> bool | None: ...
def log_ev_softmax_vjp_strided(
    lp: int,
    g: int,
    x: int,
    mask: int,
    y: int,
    shape: tuple[int, ...],
    strides: tuple[int, ...],
    mask_strides: tuple[int, ...],
    y_strides: tuple[int, ...],
    axis: int,
    dtype: int,
    threads: int,
    parallel: int,
    /,
) -> None: ...
def convert_half(
    src: int, dst: int, n: int, dtype: int, widen: bool, hardware: bool, /
) -> bool: ...

FLOAT16: int

def xla_ffi_handler() -> object: ...
def xla_ffi_vjp_handler() -> object: ...
def xla_ffi_log_grad_handler() -> object: ...
