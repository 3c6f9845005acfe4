/*
 * clients/edge/examples/transport_socket.h — a cairn_edge_transport over plain POSIX sockets,
 * for devices without libcurl: the transport interface of <cairn_edge.h>, implemented in one
 * file of HTTP/1.0 that a device maker can read in one sitting and adapt (another socket API,
 * a TLS library around the same calls). docs/EDGE.md walks through it.
 *
 * No TLS: use it on a trusted network, or wrap the socket calls with your TLS library. Bundles are
 * signed whatever the transport, so a man in the middle can withhold an update but not forge one.
 */
#ifndef CAIRN_EDGE_EXAMPLE_TRANSPORT_SOCKET_H
#define CAIRN_EDGE_EXAMPLE_TRANSPORT_SOCKET_H

#include <cairn_edge.h>

/*
 * Fills *out with a transport that sends each request on a fresh TCP connection to base_url
 * ("http://HOST[:PORT]", HOST a name, an IPv4 address or a bracketed IPv6 one; port 80 by
 * default) with "Authorization: Bearer <device_key>", and gives each request timeout_ms in all
 * (connect, send, receive). Answers are checked before use: the status line, the header block
 * (8 KiB at most), Content-Length against the bytes that arrive, bodies of 16 MiB at most.
 * Returns 0, CAIRN_EINVAL (URL, key, timeout) or CAIRN_ENOMEM. The transport is destroyed by
 * cairn_edge_close (or by cairn_edge_open when that fails).
 */
int socket_transport_new(cairn_edge_transport *out, const char *base_url, const char *device_key,
                         int timeout_ms, cairn_error *err);

#endif
