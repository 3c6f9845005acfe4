/*
 * clients/edge/transport_nocurl.c — cairn_edge_transport_curl_new in a libcairn_edge built
 * without libcurl (CAIRN_EDGE_CURL=OFF, or AUTO with no libcurl found).
 *
 * The function stays, so that a program links against either build of the library and learns at
 * run time, with a clear error, that it has to bring its own transport (cairn_edge.h).
 */
#include <string.h>

#include "clients/edge/cairn_edge.h"

int cairn_edge_transport_curl_new(cairn_edge_transport *out, const char *base_url,
                                  const char *device_key, long timeout_ms, cairn_error *err)
{
    memset(out, 0, sizeof *out);
    return cairn_errorf(err, CAIRN_EUNSUPPORTED,
                        "curl transport: this libcairn_edge was built without libcurl; "
                        "supply a cairn_edge_transport of your own (docs/EDGE.md)");
}
