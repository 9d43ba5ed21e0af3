/*
 * A Proxy-Wasm plugin in C, written against the ABI (0.2.1) with no SDK
 * and no libc: it lets through only the caller its configuration names
 * (pluginConfig {"allow": "spiffe://…"}), read from the property
 * connection.uri_san_peer_certificate, and tells the backend who called
 * (x-caller); anyone else gets a local 403.
 *
 * Build: clang --target=wasm32 -O2 -nostdlib -Wl,--no-entry \
 *        -Wl,--export-dynamic -o caller_gate.wasm caller_gate.c
 */

#define IMPORT(name) __attribute__((import_module("env"), import_name(#name)))
#define EXPORT(name) __attribute__((export_name(#name)))

IMPORT(proxy_get_property)
int proxy_get_property(const char *path, int path_len, char **value, int *value_len);
IMPORT(proxy_get_buffer_bytes)
int proxy_get_buffer_bytes(int kind, int start, int max, char **value, int *value_len);
IMPORT(proxy_add_header_map_value)
int proxy_add_header_map_value(int map, const char *key, int key_len, const char *value, int value_len);
IMPORT(proxy_send_local_response)
int proxy_send_local_response(int status, const char *details, int details_len, const char *body,
                              int body_len, const char *headers, int headers_len, int grpc_status);
IMPORT(proxy_log)
int proxy_log(int level, const char *message, int len);

/* Memory the host hands data back in: reset at every callback, since
 * nothing the host gives is kept past the callback that asked. */
static char heap[256 * 1024];
static unsigned top;

EXPORT(proxy_on_memory_allocate)
void *proxy_on_memory_allocate(unsigned size) {
    if (top + size > sizeof heap) {
        return 0;
    }
    void *at = heap + top;
    top += (size + 7) & ~7u;
    return at;
}

static int length(const char *s) {
    int n = 0;
    while (s[n]) {
        n++;
    }
    return n;
}

static int same(const char *a, int a_len, const char *b, int b_len) {
    if (a_len != b_len) {
        return 0;
    }
    for (int i = 0; i < a_len; i++) {
        if (a[i] != b[i]) {
            return 0;
        }
    }
    return 1;
}

static char allowed[512];
static int allowed_len;

EXPORT(proxy_abi_version_0_2_1) void proxy_abi_version_0_2_1(void) {}

EXPORT(proxy_on_context_create) void proxy_on_context_create(int context, int parent) {}

/* Reads "allow": "<value>" from the JSON configuration. */
EXPORT(proxy_on_configure) int proxy_on_configure(int context, int size) {
    top = 0;
    char *config;
    int len;
    if (proxy_get_buffer_bytes(7, 0, size, &config, &len) != 0) {
        return 0;
    }
    const char key[] = "\"allow\"";
    int key_len = sizeof key - 1;
    for (int i = 0; i + key_len <= len; i++) {
        if (!same(config + i, key_len, key, key_len)) {
            continue;
        }
        int start = i + key_len;
        while (start < len && config[start] != '"') {
            start++;
        }
        int end = start + 1;
        while (end < len && config[end] != '"') {
            end++;
        }
        if (end >= len || end - start - 1 > (int)sizeof allowed) {
            return 0;
        }
        allowed_len = end - start - 1;
        for (int j = 0; j < allowed_len; j++) {
            allowed[j] = config[start + 1 + j];
        }
        const char note[] = "caller_gate configured";
        proxy_log(2, note, sizeof note - 1);
        return 1;
    }
    return 0; /* no "allow": refuse the configuration */
}

EXPORT(proxy_on_request_headers) int proxy_on_request_headers(int context, int headers, int end) {
    top = 0;
    const char path[] = "connection\0uri_san_peer_certificate";
    char *caller = 0;
    int caller_len = 0;
    int found = proxy_get_property(path, sizeof path - 1, &caller, &caller_len) == 0;
    if (found && same(caller, caller_len, allowed, allowed_len)) {
        const char name[] = "x-caller";
        proxy_add_header_map_value(0, name, sizeof name - 1, caller, caller_len);
        return 0;
    }
    const char details[] = "caller_gate";
    const char body[] = "caller not allowed\n";
    proxy_send_local_response(403, details, length(details), body, length(body), 0, 0, -1);
    return 1;
}
