/* A fast OCPI party for benchmarks, as bench/receiver.py without its /p/{n}/ parties: one process, one thread,
 * epoll, keep-alive HTTP/1.1. It serves its versions and 2.2.1 details (every module, both interfaces) so it can
 * register at the hub, and answers anything else, once its body is read, with a fixed OCPI success envelope.
 *
 *   receiver PORT
 *
 * Written in C, as the load generators are: bench/receiver.py on granian spent about 190 us of CPU a request paced
 * at 2,000/s (a wake-up of granian's threads and of Python for each), a fifth of this 2-core machine, taken from
 * the hub it served. bench/harness.py compiles it with gcc.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUFFER (1 << 20) /* a request's head and body: the hub's pushes are a few kB */

struct connection {
    int fd;
    size_t have;
    char *buffer;
};

static const char OK[] = "{\"data\":null,\"status_code\":1000,\"status_message\":null,\"timestamp\":\"2026-11-25T10:00:00Z\"}";
static const char *MODULES[] = {"cdrs", "chargingprofiles", "commands", "hubclientinfo",
                                "locations", "sessions", "tariffs", "tokens"};

static size_t respond(char *out, size_t size, const char *body) {
    return (size_t)snprintf(out, size, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %zu\r\n\r\n%s",
                            strlen(body), body);
}

/* The answer to the request whose head is head (up to its blank line), written into out; its length. */
static size_t answer(const char *head, char *out, size_t size) {
    const char *path = strchr(head, ' ') + 1, *path_end = strchr(path, ' ');
    size_t path_length = (size_t)(path_end - path);
    char host[256] = "127.0.0.1";
    for (const char *line = strstr(head, "\r\n"); line != NULL; line = strstr(line + 2, "\r\n")) {
        if (strncasecmp(line + 2, "host:", 5) == 0) {
            const char *value = line + 7;
            while (*value == ' ') value++;
            size_t n = strcspn(value, "\r");
            if (n < sizeof host) memcpy(host, value, n), host[n] = 0;
            break;
        }
    }
    static char body[8192];
    if (path_length == strlen("/ocpi/versions") && strncmp(path, "/ocpi/versions", path_length) == 0) {
        snprintf(body, sizeof body,
                 "{\"data\":[{\"version\":\"2.2.1\",\"url\":\"http://%s/ocpi/2.2.1\"}],\"status_code\":1000,"
                 "\"timestamp\":\"2026-11-25T10:00:00Z\"}", host);
        return respond(out, size, body);
    }
    if (path_length == strlen("/ocpi/2.2.1") && strncmp(path, "/ocpi/2.2.1", path_length) == 0) {
        int n = snprintf(body, sizeof body,
                         "{\"data\":{\"version\":\"2.2.1\",\"endpoints\":[{\"identifier\":\"credentials\",\"role\":"
                         "\"SENDER\",\"url\":\"http://%s/ocpi/2.2.1/credentials\"}", host);
        for (size_t m = 0; m < sizeof MODULES / sizeof *MODULES; m++)
            for (int r = 0; r < 2; r++)
                n += snprintf(body + n, sizeof body - (size_t)n,
                              ",{\"identifier\":\"%s\",\"role\":\"%s\",\"url\":\"http://%s/ocpi/2.2.1/%s/%s\"}",
                              MODULES[m], r ? "RECEIVER" : "SENDER", host, MODULES[m], r ? "receiver" : "sender");
        snprintf(body + n, sizeof body - (size_t)n, "]},\"status_code\":1000,\"timestamp\":\"2026-11-25T10:00:00Z\"}");
        return respond(out, size, body);
    }
    return respond(out, size, OK);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    int listener = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 1024) != 0) {
        perror("receiver: cannot listen");
        return 1;
    }
    int epoll_fd = epoll_create1(0);
    struct epoll_event event = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, listener, &event);
    static char out[16384];
    struct epoll_event events[64];
    for (;;) {
        int n = epoll_wait(epoll_fd, events, 64, -1);
        for (int i = 0; i < n; i++) {
            struct connection *c = events[i].data.ptr;
            if (c == NULL) { /* a new connection */
                int fd = accept4(listener, NULL, NULL, 0);
                if (fd < 0) continue;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                c = calloc(1, sizeof *c);
                c->fd = fd;
                c->buffer = malloc(BUFFER + 1);
                struct epoll_event readable = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &readable);
                continue;
            }
            ssize_t got = c->have < BUFFER ? read(c->fd, c->buffer + c->have, BUFFER - c->have) : 0;
            if (got <= 0) { /* closed, broken, or a request larger than the buffer */
                epoll_ctl(epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                free(c->buffer);
                free(c);
                continue;
            }
            c->have += (size_t)got;
            for (;;) { /* every complete request in the buffer, in order */
                c->buffer[c->have] = 0;
                char *end = strstr(c->buffer, "\r\n\r\n");
                if (end == NULL) break;
                size_t length = 0;
                for (char *line = strstr(c->buffer, "\r\n"); line != NULL && line < end; line = strstr(line + 2, "\r\n"))
                    if (strncasecmp(line + 2, "content-length:", 15) == 0) length = (size_t)atol(line + 17);
                size_t whole = (size_t)(end + 4 - c->buffer) + length;
                if (whole > c->have) break; /* the body is still coming */
                *end = 0;
                size_t written = answer(c->buffer, out, sizeof out);
                if (write(c->fd, out, written) < 0) break;
                memmove(c->buffer, c->buffer + whole, c->have - whole);
                c->have -= whole;
            }
        }
    }
}
