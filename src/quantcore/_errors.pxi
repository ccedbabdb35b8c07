# Status codes -> Python exceptions.

cdef int raise_status(qc_status st, qc_error err, str what) except -1:
    """Raise the exception for a non-OK status; `what` names the argument."""
    if st == QC_OK:
        return 0
    where = ""
    if err.row >= 0:
        where = f" at row {err.row}, column {err.col}"
    if st == QC_ERR_NONFINITE:
        raise ValueError(f"{what} contains NaN or Inf{where}; quantization needs finite values")
    if st == QC_ERR_RANGE:
        raise ValueError(f"{what} has a value out of range{where}")
    if st == QC_ERR_OVERFLOW:
        raise ValueError(f"{what} needs a scale outside the range of the scale dtype{where} "
                         f"(float16 holds up to 65504; a range wider than float32's max "
                         f"overflows any scale); use scale_dtype='float32' or rescale the data")
    if st == QC_ERR_NOMEM:
        raise MemoryError(f"quantcore could not allocate scratch memory for {what}")
    if st == QC_ERR_UNSUPPORTED:
        raise RuntimeError(f"{what}: not supported by this CPU or build")
    raise ValueError(f"invalid arguments for {what} (status {<int>st})")
