/* The C ABI's header, where the workspace keeps it (one source of truth). */
#include "../../../ffi/include/pith.h"
