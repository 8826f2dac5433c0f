/*
 * The parts of the XLA FFI C ABI (xla/ffi/api/c_api.h, shipped with jaxlib,
 * which this build cannot see) that evsoftmax's handlers read, in the layout of
 * API version 0.1: every struct starts with its size and an extension chain. XLA
 * first calls a handler with a metadata extension to ask which API version it
 * implements (ffi_metadata answers it). Shared by the C kernels' handlers.
 */
#ifndef EVSOFTMAX_XLA_FFI_H
#define EVSOFTMAX_XLA_FFI_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

typedef struct evs_ffi_extension {
    size_t struct_size;
    int type; /* 1: metadata request */
    struct evs_ffi_extension *next;
} evs_ffi_extension;

typedef struct {
    size_t struct_size;
    evs_ffi_extension *extension;
    int dtype; /* EVS_FFI_PRED, _F16, _BF16, _F32, _F64 */
    void *data;
    int64_t rank;
    int64_t *dims;
} evs_ffi_buffer;

typedef struct { /* the arguments, or the results */
    size_t struct_size;
    evs_ffi_extension *extension;
    int64_t size;
    int *types; /* 1: buffer */
    void **items;
} evs_ffi_list;

typedef struct {
    size_t struct_size;
    evs_ffi_extension *extension;
    int64_t size;
    int *types;
    void **names;
    void **values;
} evs_ffi_attributes;

typedef struct {
    size_t struct_size;
    evs_ffi_extension *extension;
    const void *api;
    void *context;
    int stage; /* 3: execute */
    evs_ffi_list args;
    evs_ffi_list rets;
    evs_ffi_attributes attrs;
    void *future;
} evs_ffi_call_frame;

typedef struct {
    size_t struct_size;
    evs_ffi_extension *extension;
    int major_version;
    int minor_version;
} evs_ffi_api_version;

typedef struct {
    size_t struct_size;
    evs_ffi_api_version api_version;
    uint32_t traits;
} evs_ffi_metadata;

typedef struct {
    evs_ffi_extension base;
    evs_ffi_metadata *metadata;
} evs_ffi_metadata_extension;

#define EVS_FFI_METADATA 1
#define EVS_FFI_EXECUTE 3
/* Element types (XLA_FFI_DataType: the PrimitiveType numbers of xla_data.proto). */
#define EVS_FFI_PRED 1
#define EVS_FFI_F16 10
#define EVS_FFI_F32 11
#define EVS_FFI_F64 12
#define EVS_FFI_BF16 16

static inline int ffi_buffer(const evs_ffi_list *list, int64_t index, evs_ffi_buffer **buffer) {
    if (index >= list->size || list->types[index] != 1) return 0;
    *buffer = (evs_ffi_buffer *)list->items[index];
    return 1;
}

/* Answers XLA's metadata request (which API version the handler implements);
 * returns 1 if the call was one. */
static inline int ffi_metadata(evs_ffi_call_frame *frame) {
    evs_ffi_extension *extension = frame->extension;
    if (extension == NULL || extension->type != EVS_FFI_METADATA) return 0;
    evs_ffi_metadata *metadata = ((evs_ffi_metadata_extension *)extension)->metadata;
    metadata->api_version.major_version = 0;
    metadata->api_version.minor_version = 1;
    metadata->traits = 0;
    return 1;
}

/* Reads an execute call of `arrays` operands (into in[0..arrays)) of one shape (rank
 * >= 1) and dtype (F32 or F64), then an operand of `nparams` parameters in that dtype
 * (into params, as double), and one result of that shape and dtype (into *result).
 * Returns whether the call has that form; *result is NULL if there is no result
 * (or the call is not an execute call). */
static inline int ffi_rows_call(evs_ffi_call_frame *frame, int arrays, int nparams,
                                evs_ffi_buffer **in, evs_ffi_buffer **result, double *params) {
    evs_ffi_buffer *y, *p;
    *result = NULL;
    if (frame->stage != EVS_FFI_EXECUTE || !ffi_buffer(&frame->rets, 0, &y)) return 0;
    *result = y;
    int ok = (y->dtype == EVS_FFI_F32 || y->dtype == EVS_FFI_F64) && y->rank >= 1 &&
             ffi_buffer(&frame->args, arrays, &p) && p->dtype == y->dtype && p->rank == 1 &&
             p->dims[0] == nparams;
    for (int a = 0; ok && a < arrays; a++) {
        ok = ffi_buffer(&frame->args, a, &in[a]) && in[a]->dtype == y->dtype &&
             in[a]->rank == y->rank;
        for (int64_t d = 0; ok && d < y->rank; d++) ok = in[a]->dims[d] == y->dims[d];
    }
    for (int i = 0; ok && i < nparams; i++)
        params[i] = y->dtype == EVS_FFI_F64 ? ((const double *)p->data)[i]
                                            : (double)((const float *)p->data)[i];
    return ok;
}

/* The number of entries of a buffer. */
static inline int64_t ffi_size(const evs_ffi_buffer *buffer) {
    int64_t size = 1;
    for (int64_t d = 0; d < buffer->rank; d++) size *= buffer->dims[d];
    return size;
}

/* Fills a float buffer (F32, F64, F16, BF16) with NaN: the result of a call a handler cannot serve
 * (never made by evsoftmax), so that it cannot pass for one. */
static inline void ffi_fill_nan(evs_ffi_buffer *buffer) {
    int64_t size = ffi_size(buffer);
    for (int64_t i = 0; i < size; i++) {
        if (buffer->dtype == EVS_FFI_F64) ((double *)buffer->data)[i] = (double)NAN;
        if (buffer->dtype == EVS_FFI_F32) ((float *)buffer->data)[i] = NAN;
        if (buffer->dtype == EVS_FFI_F16) ((uint16_t *)buffer->data)[i] = 0x7e00u;
        if (buffer->dtype == EVS_FFI_BF16) ((uint16_t *)buffer->data)[i] = 0x7fc0u;
    }
}

#endif /* EVSOFTMAX_XLA_FFI_H */
