/*
 * loadgen: a minimal closed-loop HTTP/1.1 load generator for HEAD, for GET of
 * large bodies, and for uploads of new small blobs.
 *
 * Debian's wrk 4.1 (and h2load) wait for a body after a HEAD response that
 * carries Content-Length, so they cannot measure HEAD; hey can, but its Go
 * client saturates well below nginx on two cores.  And wrk reads bodies 8 KiB
 * at a time into user space, so for large GETs it is the bottleneck, not the
 * server.  This does the one thing needed: N keep-alive connections spread
 * over T threads (epoll each), one request in flight per connection, the same
 * request over and over, for D seconds.  Responses are framed by their
 * headers; a GET body is skipped by Content-Length (chunked bodies are not
 * supported) with recv(MSG_TRUNC), which discards it in the kernel without a
 * copy to user space, so the client costs next to nothing per byte.
 *
 *   loadgen HOST PORT PATH METHOD CONNECTIONS THREADS SECONDS
 *   loadgen HOST PORT / POST CONNECTIONS THREADS SECONDS PREFIX_FILE NAMES_FILE AUTHORIZATION
 *
 * POST uploads a new blob per request: its body is PREFIX_FILE's bytes then
 * the suffix of the next "sha suffix" line of NAMES_FILE (bench/run.py
 * computes the sha-256s), sent from memory with one writev, so the client's
 * cost per upload is a few system calls (wrk's Lua builds a new 64 KiB string
 * per request: about half a millisecond of CPU taken from the server on a
 * 2-core machine).  Lines are handed out in order across all connections;
 * running out wraps around (repeats are counted in "wrapped").
 *
 * Prints one JSON object: requests, bytes (body bytes received, whole
 * responses or not), duration_s, status counts (201 also on its own),
 * latency percentiles, errors.
 * Built by bench/run.py with `cc -O2 -pthread`.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define BUF 65536

struct conn {
    int fd;
    size_t sent;          /* bytes of the request written so far */
    char buf[BUF];
    size_t len;           /* bytes in buf */
    long long body_left;  /* body bytes still to skip, -1 while reading headers */
    double started;       /* when the request in flight was sent */
};

/* Latency histogram: 100 us buckets up to 10 s (the last one collects the rest). */
#define LAT_BUCKET_US 100
#define LAT_BUCKETS 100000

struct worker {
    pthread_t thread;
    int nconns;
    uint64_t requests, body_bytes, s2xx, s201, s3xx, s4xx, s5xx, sother;
    uint64_t *latency;  /* LAT_BUCKETS counts */
    uint64_t connect_errors, read_errors, write_errors;
};

static const char *g_host;
static int g_port;
static char g_request[4096];
static size_t g_request_len;
static int g_is_head;
static double g_deadline;

/* POST mode */
static int g_is_post;
static char *g_prefix;
static size_t g_prefix_len;
static char (*g_shas)[65];
static char **g_suffixes;
static size_t g_names;
static uint64_t g_next_name;  /* atomic */
static uint64_t g_wrapped;    /* atomic */
static const char *g_auth;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int open_conn(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(g_port);
    if (inet_pton(AF_INET, g_host, &a.sin_addr) != 1) { close(fd); return -1; }
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { close(fd); return -1; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int write_all_iov(int fd, struct iovec *iov, int n) {
    while (n > 0) {
        ssize_t k = writev(fd, iov, n);
        if (k < 0) { if (errno == EINTR) continue; return -1; }
        while (n > 0 && (size_t)k >= iov->iov_len) { k -= (ssize_t)iov->iov_len; iov++; n--; }
        if (n > 0) { iov->iov_base = (char *)iov->iov_base + k; iov->iov_len -= (size_t)k; }
    }
    return 0;
}

/* Writes the next request (blocking sockets: loopback takes a small upload at once). 0 ok, -1 error. */
static int send_request(struct conn *c) {
    c->started = now();
    if (!g_is_post) {
        struct iovec iov = {g_request, g_request_len};
        return write_all_iov(c->fd, &iov, 1);
    }
    uint64_t i = __atomic_fetch_add(&g_next_name, 1, __ATOMIC_RELAXED);
    if (i >= g_names) __atomic_fetch_add(&g_wrapped, 1, __ATOMIC_RELAXED);
    i %= g_names;
    size_t suffix_len = strlen(g_suffixes[i]);
    char head[1024];
    int hlen = snprintf(head, sizeof head,
                        "POST /%s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: loadgen\r\nAuthorization: %s\r\n"
                        "Content-Type: application/octet-stream\r\nContent-Length: %zu\r\n\r\n",
                        g_shas[i], g_host, g_port, g_auth, g_prefix_len + suffix_len);
    if (hlen < 0 || (size_t)hlen >= sizeof head) return -1;  /* an Authorization value too long for the head */
    struct iovec iov[3] = {{head, (size_t)hlen}, {g_prefix, g_prefix_len}, {g_suffixes[i], suffix_len}};
    return write_all_iov(c->fd, iov, 3);
}

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *data = malloc((size_t)n + 1);
    if (fread(data, 1, (size_t)n, f) != (size_t)n) { perror(path); exit(2); }
    data[n] = 0;
    fclose(f);
    *len = (size_t)n;
    return data;
}

static void load_names(const char *path) {
    size_t len;
    char *text = slurp(path, &len);
    size_t cap = 1024;
    g_shas = malloc(cap * sizeof *g_shas);
    g_suffixes = malloc(cap * sizeof *g_suffixes);
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        size_t n = strlen(line);
        if (n > 0 && line[n - 1] == '\r') line[n - 1] = 0;  /* CRLF line ends */
        char *space = strchr(line, ' ');
        if (!space || space - line != 64) { fprintf(stderr, "loadgen: bad names line: %s\n", line); exit(2); }
        if (g_names == cap) {
            cap *= 2;
            g_shas = realloc(g_shas, cap * sizeof *g_shas);
            g_suffixes = realloc(g_suffixes, cap * sizeof *g_suffixes);
        }
        memcpy(g_shas[g_names], line, 64);
        g_shas[g_names][64] = 0;
        g_suffixes[g_names] = space + 1;
        g_names++;
    }
    if (g_names == 0) { fprintf(stderr, "loadgen: no names in %s\n", path); exit(2); }
}

static long long header_content_length(const char *h, size_t n) {
    const char *p = h, *end = h + n;
    while (p < end) {
        const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (!eol) eol = end;
        if ((size_t)(eol - p) > 15 && strncasecmp(p, "content-length:", 15) == 0) {
            return strtoll(p + 15, NULL, 10);
        }
        p = eol + 2;
    }
    return -1;
}

static void count_status(struct worker *w, int status) {
    w->requests++;
    if (status == 201) w->s201++;
    if (status >= 200 && status < 300) w->s2xx++;
    else if (status >= 300 && status < 400) w->s3xx++;
    else if (status >= 400 && status < 500) w->s4xx++;
    else if (status >= 500 && status < 600) w->s5xx++;
    else w->sother++;
}

static void record_latency(struct worker *w, struct conn *c) {
    long long b = (long long)((now() - c->started) * 1e6) / LAT_BUCKET_US;
    w->latency[b < LAT_BUCKETS ? b : LAT_BUCKETS - 1]++;
}

/* The latency in microseconds below which a fraction q of the completed responses came. */
static double percentile_us(const uint64_t *hist, double q) {
    uint64_t total = 0;
    for (int b = 0; b < LAT_BUCKETS; b++) total += hist[b];
    if (total == 0) return 0;
    uint64_t seen = 0, want = (uint64_t)(q * (double)total);
    for (int b = 0; b < LAT_BUCKETS; b++) {
        seen += hist[b];
        if (seen > want) return (b + 1) * (double)LAT_BUCKET_US;
    }
    return LAT_BUCKETS * (double)LAT_BUCKET_US;
}

/* Consumes what is in c->buf; returns the number of responses completed, -1 on a protocol error. */
static int consume(struct worker *w, struct conn *c) {
    int done = 0;
    for (;;) {
        if (c->body_left > 0) {
            size_t k = c->len < (size_t)c->body_left ? c->len : (size_t)c->body_left;
            memmove(c->buf, c->buf + k, c->len - k);
            c->len -= k;
            c->body_left -= (long long)k;
            w->body_bytes += k;
            if (c->body_left > 0) return done;
            c->body_left = -1;
            record_latency(w, c);
            done++;
            continue;
        }
        if (c->len == 0) return done;
        char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (!end) {
            if (c->len == BUF) return -1;  /* headers too large */
            return done;
        }
        size_t hlen = (size_t)(end - c->buf) + 4;
        if (c->len < 12 || strncmp(c->buf, "HTTP/1.", 7) != 0) return -1;
        int status = atoi(c->buf + 9);
        long long cl = g_is_head ? 0 : header_content_length(c->buf, hlen);
        if (cl < 0) return -1;  /* no Content-Length on a GET: not supported */
        count_status(w, status);
        memmove(c->buf, c->buf + hlen, c->len - hlen);
        c->len -= hlen;
        if (cl > 0) {
            c->body_left = cl;  /* the response completes when its body is skipped */
            continue;
        }
        record_latency(w, c);
        done++;
    }
}

static void *run(void *arg) {
    struct worker *w = arg;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct conn *conns = calloc((size_t)w->nconns, sizeof *conns);
    for (int i = 0; i < w->nconns; i++) {
        conns[i].fd = open_conn();
        conns[i].body_left = -1;
        if (conns[i].fd < 0) { w->connect_errors++; continue; }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &conns[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev);
        if (send_request(&conns[i]) < 0) w->write_errors++;
    }
    struct epoll_event events[256];
    while (now() < g_deadline) {
        int n = epoll_wait(ep, events, 256, 50);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c->body_left > 0 && c->len == 0) {
                /* In the middle of a body: discard it in the kernel (no copy to user space). */
                size_t want = c->body_left > (1LL << 30) ? (size_t)1 << 30 : (size_t)c->body_left;
                ssize_t d = recv(c->fd, c->buf, want, MSG_TRUNC | MSG_DONTWAIT);
                if (d > 0) {
                    c->body_left -= d;
                    w->body_bytes += (uint64_t)d;
                    if (c->body_left == 0) {
                        c->body_left = -1;
                        record_latency(w, c);
                        if (now() < g_deadline && send_request(c) < 0) w->write_errors++;
                    }
                    continue;
                }
                if (d < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                /* 0 or an error: fall through to read(), which reports it */
            }
            ssize_t r = read(c->fd, c->buf + c->len, BUF - c->len);
            if (r <= 0) {
                if (r < 0 && errno == EINTR) continue;
                /* closed or failed: reconnect */
                w->read_errors++;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->len = 0;
                c->body_left = -1;
                c->fd = open_conn();
                if (c->fd < 0) { w->connect_errors++; continue; }
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
                if (send_request(c) < 0) w->write_errors++;
                continue;
            }
            c->len += (size_t)r;
            int k = consume(w, c);
            if (k < 0) {
                w->read_errors++;
                c->len = 0;
                continue;
            }
            /* one request in flight per connection: a completed response sends the next */
            if (k > 0 && c->len == 0 && c->body_left < 0 && now() < g_deadline) {
                if (send_request(c) < 0) w->write_errors++;
            }
        }
    }
    for (int i = 0; i < w->nconns; i++)
        if (conns[i].fd >= 0) close(conns[i].fd);
    free(conns);
    close(ep);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 8 && argc != 11) {
        fprintf(stderr, "usage: loadgen HOST PORT PATH METHOD CONNECTIONS THREADS SECONDS "
                        "[PREFIX_FILE NAMES_FILE AUTHORIZATION]\n");
        return 2;
    }
    g_host = argv[1];
    g_port = atoi(argv[2]);
    const char *path = argv[3], *method = argv[4];
    int nconns = atoi(argv[5]), nthreads = atoi(argv[6]);
    double seconds = atof(argv[7]);
    if (nconns < 1 || nthreads < 1 || nthreads > nconns || seconds <= 0) {
        fprintf(stderr, "loadgen: bad arguments\n");
        return 2;
    }
    g_is_head = strcmp(method, "HEAD") == 0;
    g_is_post = strcmp(method, "POST") == 0;
    if (g_is_post != (argc == 11)) {
        fprintf(stderr, "loadgen: POST takes PREFIX_FILE NAMES_FILE AUTHORIZATION, other methods none\n");
        return 2;
    }
    if (g_is_post) {
        g_prefix = slurp(argv[8], &g_prefix_len);
        load_names(argv[9]);
        g_auth = argv[10];
    }
    g_request_len = (size_t)snprintf(g_request, sizeof g_request,
                                     "%s %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: loadgen\r\n\r\n",
                                     method, path, g_host, g_port);
    struct worker *ws = calloc((size_t)nthreads, sizeof *ws);
    double start = now();
    g_deadline = start + seconds;
    for (int t = 0; t < nthreads; t++) {
        ws[t].nconns = nconns / nthreads + (t < nconns % nthreads ? 1 : 0);
        ws[t].latency = calloc(LAT_BUCKETS, sizeof(uint64_t));
        pthread_create(&ws[t].thread, NULL, run, &ws[t]);
    }
    struct worker sum = {0};
    sum.latency = calloc(LAT_BUCKETS, sizeof(uint64_t));
    for (int t = 0; t < nthreads; t++) {
        pthread_join(ws[t].thread, NULL);
        sum.requests += ws[t].requests;
        sum.body_bytes += ws[t].body_bytes;
        sum.s2xx += ws[t].s2xx; sum.s201 += ws[t].s201; sum.s3xx += ws[t].s3xx; sum.s4xx += ws[t].s4xx;
        sum.s5xx += ws[t].s5xx; sum.sother += ws[t].sother;
        sum.connect_errors += ws[t].connect_errors;
        sum.read_errors += ws[t].read_errors;
        sum.write_errors += ws[t].write_errors;
        for (int b = 0; b < LAT_BUCKETS; b++) sum.latency[b] += ws[t].latency[b];
    }
    double elapsed = now() - start;
    printf("{\"requests\": %llu, \"bytes\": %llu, \"duration_s\": %.6f, \"status\": {\"2xx\": %llu, \"201\": %llu, "
           "\"3xx\": %llu, \"4xx\": %llu, \"5xx\": %llu, \"other\": %llu}, \"wrapped\": %llu, "
           "\"latency_p50_us\": %.0f, \"latency_p99_us\": %.0f, \"errors\": {\"connect\": %llu, "
           "\"read\": %llu, \"write\": %llu}}\n",
           (unsigned long long)sum.requests, (unsigned long long)sum.body_bytes, elapsed, (unsigned long long)sum.s2xx,
           (unsigned long long)sum.s201, (unsigned long long)sum.s3xx, (unsigned long long)sum.s4xx,
           (unsigned long long)sum.s5xx, (unsigned long long)sum.sother, (unsigned long long)g_wrapped,
           percentile_us(sum.latency, 0.5), percentile_us(sum.latency, 0.99),
           (unsigned long long)sum.connect_errors, (unsigned long long)sum.read_errors,
           (unsigned long long)sum.write_errors);
    return 0;
}
