/*
 * loadgen.c: load generator and loopback origin for exitgate's benchmark.
 *
 * One single-threaded epoll process per invocation. Modes:
 *   origin      HTTP/1.1 keep-alive server answering "200 ok" to every request, plus
 *               a bulk mode: a connection that starts with "BULK <n>\n" gets n bytes
 *               back while everything it sends is read and dropped.
 *   connect     new connection, tunnel (--via http|socks5|none), one GET, close.
 *   forward     keep-alive absolute-form GETs through an HTTP proxy (origin-form
 *               straight to the origin with --via none).
 *   throughput  --conc tunnels each moving --bytes both ways at once.
 *   idle        open --count tunnels, print "READY {json}", hold them until stdin
 *               closes or --hold seconds pass, then check each still carries a GET.
 * Every client mode prints one JSON object on stdout. Loops are bounded by
 * --duration (rate modes) or a hard cap (--max-seconds) in every mode.
 *
 * Build: gcc -O2 -o loadgen loadgen.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RBUF 4096
#define WBUF 1024
#define BULK_CHUNK (256 * 1024)
#define MAX_EVENTS 1024

enum mode { M_ORIGIN, M_CONNECT, M_FORWARD, M_THROUGHPUT, M_IDLE };
enum via { V_HTTP, V_SOCKS5, V_NONE };
enum state {
    ST_FREE, ST_CONNECTING, ST_HTTP_CONNECT, ST_S5_METHOD, ST_S5_AUTH, ST_S5_REPLY,
    ST_RESP, ST_BULK, ST_IDLE,
    /* origin side */
    ST_O_REQ, ST_O_BULK
};
enum err { E_CONNECT, E_STATUS, E_EOF, E_TIMEOUT, E_PROTO, E_IO, E_N };
static const char *err_names[E_N] = {"connect", "status", "eof", "timeout", "proto", "io"};

typedef struct conn {
    int fd;
    enum state st;
    uint32_t events;
    uint64_t t_start; /* start of the current transaction (latency origin) */
    uint64_t t_op;    /* last progress, for the timeout */
    char rbuf[RBUF];
    size_t rlen;
    char wbuf[WBUF];
    size_t wlen, woff;
    uint64_t up_left, down_left; /* bulk */
    int close_after;             /* origin: the request asked for Connection: close */
    int keepalive;               /* forward: server lets us reuse the connection */
    int reqs;                    /* forward: requests done on this connection */
    unsigned gen;                /* bumped per connection: stale events are skipped */
} conn_t;

static struct {
    enum mode mode;
    enum via via;
    struct sockaddr_in proxy, target, listen_addr;
    char target_str[64];
    char auth_b64[700];
    char user[256], pass[256];
    long sessions; /* > 0: usernames USER-session-sK, K cycling over this many */
    int conc;
    long count;
    double duration, warmup, timeout, hold, max_seconds;
    uint64_t bytes;
    int backlog;
} cfg;

static int ep;
static char bulk_buf[BULK_CHUNK];
static char scratch[BULK_CHUNK];

/* stats */
static uint64_t *lat;
static size_t nlat, caplat;
static long completed, started, errors[E_N], reconnects, warm_done;
static uint64_t t_begin, t_measure, t_end;
static int measuring_done;
/* throughput */
static uint64_t bytes_up, bytes_down, t_bulk_first, t_bulk_last;
static long bulk_done;
/* idle */
static long idle_open, idle_failed, idle_dropped, failed_total;
static int idle_checking;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void raise_nofile(void) {
    /* 5,000 idle tunnels need more than the usual soft limit of 1024 descriptors. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void b64(const unsigned char *in, size_t n, char *out) {
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i, o = 0;
    for (i = 0; i + 2 < n; i += 3) {
        out[o++] = t[in[i] >> 2];
        out[o++] = t[((in[i] & 3) << 4) | (in[i + 1] >> 4)];
        out[o++] = t[((in[i + 1] & 15) << 2) | (in[i + 2] >> 6)];
        out[o++] = t[in[i + 2] & 63];
    }
    if (i < n) {
        out[o++] = t[in[i] >> 2];
        if (i + 1 < n) {
            out[o++] = t[((in[i] & 3) << 4) | (in[i + 1] >> 4)];
            out[o++] = t[(in[i + 1] & 15) << 2];
        } else {
            out[o++] = t[(in[i] & 3) << 4];
            out[o++] = '=';
        }
        out[o++] = '=';
    }
    out[o] = 0;
}

static int parse_addr(const char *s, struct sockaddr_in *a) {
    char host[64];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof host) return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)atoi(colon + 1));
    return inet_pton(AF_INET, host, &a->sin_addr) == 1 ? 0 : -1;
}

static void ep_set(conn_t *c, uint32_t ev) {
    if (c->events == ev) return;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    if (epoll_ctl(ep, c->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &e) < 0) die("epoll_ctl");
    c->events = ev;
}

static void conn_close(conn_t *c) {
    if (c->fd >= 0) close(c->fd); /* close() also drops it from the epoll set */
    c->fd = -1;
    c->events = 0;
    c->st = ST_FREE;
    c->rlen = c->wlen = c->woff = 0;
}

/* Write what is pending in c->wbuf; returns -1 on error. Arms EPOLLOUT while bytes remain. */
static int flush_w(conn_t *c) {
    while (c->woff < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) {
                ep_set(c, c->events | EPOLLOUT);
                return 0;
            }
            return -1;
        }
        c->woff += (size_t)n;
    }
    c->wlen = c->woff = 0;
    return 0;
}

static int queue_w(conn_t *c, const void *p, size_t n) {
    if (c->wlen + n > WBUF) return -1;
    memcpy(c->wbuf + c->wlen, p, n);
    c->wlen += n;
    return flush_w(c);
}

static void record_latency(conn_t *c, uint64_t t) {
    if (t < t_measure) {
        warm_done++;
        return;
    }
    completed++;
    if (nlat == caplat) {
        caplat = caplat ? caplat * 2 : 65536;
        lat = realloc(lat, caplat * sizeof *lat);
        if (!lat) die("realloc");
    }
    lat[nlat++] = t - c->t_start;
}

/* ---------------------------------------------------------------- client side */

static void launch(conn_t *c);

static void fail(conn_t *c, enum err e) {
    uint64_t t = now_ns();
    if (t >= t_measure && t < t_end) errors[e]++;
    failed_total++;
    if (cfg.mode == M_IDLE && !idle_checking) {
        if (c->st == ST_IDLE) idle_dropped++;
        else idle_failed++;
    }
    conn_close(c);
    if (cfg.mode == M_CONNECT || cfg.mode == M_FORWARD) launch(c);
    if (cfg.mode == M_THROUGHPUT) bulk_done++; /* a failed tunnel is finished too */
}

/* --sessions N: each tunnel (or forwarded request) names the next of N sessions in turn, so
 * every session is reused N-th tunnel after N-th tunnel. Otherwise the fixed --user. */
static long sess_next;
static const char *next_user(char *buf, size_t n) {
    if (cfg.sessions <= 0) return cfg.user;
    snprintf(buf, n, "%s-session-s%ld", cfg.user, sess_next++ % cfg.sessions);
    return buf;
}

static const char *next_auth_b64(char *out /* 700 */) {
    char u[300], up[600];
    if (cfg.sessions <= 0) return cfg.auth_b64;
    snprintf(up, sizeof up, "%s:%s", next_user(u, sizeof u), cfg.pass);
    b64((const unsigned char *)up, strlen(up), out);
    return out;
}

static int send_get(conn_t *c) {
    char ab[700];
    char req[WBUF];
    int n;
    if (cfg.mode == M_FORWARD && cfg.via == V_HTTP)
        n = snprintf(req, sizeof req,
                     "GET http://%s/ HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n",
                     cfg.target_str, cfg.target_str, next_auth_b64(ab));
    else if (cfg.mode == M_FORWARD)
        n = snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", cfg.target_str);
    else /* one request, then close: say so, and the origin closes first. Its side then holds
          * the TIME_WAIT, not the proxy's ephemeral ports (dante binds before it connects and
          * would run out of them within a minute at a few thousand tunnels per second). */
        n = snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n",
                     cfg.target_str);
    c->st = ST_RESP;
    c->rlen = 0;
    c->t_op = now_ns();
    return queue_w(c, req, (size_t)n);
}

static void tunnel_ready(conn_t *c) {
    c->t_op = now_ns();
    if (cfg.mode == M_IDLE) {
        c->st = ST_IDLE;
        idle_open++;
        ep_set(c, EPOLLIN);
        return;
    }
    if (cfg.mode == M_THROUGHPUT) {
        char hdr[64];
        int n = snprintf(hdr, sizeof hdr, "BULK %llu\n", (unsigned long long)cfg.bytes);
        c->st = ST_BULK;
        c->up_left = cfg.bytes;
        c->down_left = cfg.bytes + 1; /* + the origin's acknowledgement byte */
        if (!t_bulk_first) t_bulk_first = now_ns();
        if (queue_w(c, hdr, (size_t)n) < 0) return fail(c, E_IO);
        ep_set(c, EPOLLIN | EPOLLOUT);
        return;
    }
    if (send_get(c) < 0) fail(c, E_IO);
}

static void begin_tunnel(conn_t *c) {
    char req[WBUF], ab[700];
    int n;
    c->t_op = now_ns();
    ep_set(c, EPOLLIN);
    if (cfg.via == V_NONE || cfg.mode == M_FORWARD) {
        if (cfg.mode == M_FORWARD) {
            if (send_get(c) < 0) fail(c, E_IO);
        } else {
            tunnel_ready(c);
        }
        return;
    }
    c->rlen = 0;
    if (cfg.via == V_HTTP) {
        n = snprintf(req, sizeof req,
                     "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n",
                     cfg.target_str, cfg.target_str, next_auth_b64(ab));
        c->st = ST_HTTP_CONNECT;
        if (queue_w(c, req, (size_t)n) < 0) fail(c, E_IO);
    } else {
        /* Only method 0x02 is offered, so every peer has to check credentials each time. */
        static const unsigned char greet[3] = {5, 1, 2};
        c->st = ST_S5_METHOD;
        if (queue_w(c, greet, 3) < 0) fail(c, E_IO);
    }
}

static void launch(conn_t *c) {
    uint64_t t = now_ns();
    if (cfg.mode == M_CONNECT || cfg.mode == M_FORWARD) {
        if (t >= t_end) return;
    } else if (cfg.count && started >= cfg.count) {
        return;
    }
    started++;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->gen++;
    c->events = 0;
    c->rlen = c->wlen = c->woff = 0;
    c->t_start = c->t_op = t;
    c->reqs = 0;
    c->keepalive = 1;
    const struct sockaddr_in *dst = cfg.via == V_NONE ? &cfg.target : &cfg.proxy;
    if (connect(fd, (const struct sockaddr *)dst, sizeof *dst) < 0 && errno != EINPROGRESS) {
        c->st = ST_CONNECTING;
        return fail(c, E_CONNECT);
    }
    c->st = ST_CONNECTING;
    ep_set(c, EPOLLOUT);
}

/* Parse an HTTP response head in c->rbuf. Returns total message length (head + body),
 * 0 when more bytes are needed, -1 when malformed. *status and keepalive are filled. */
static long parse_resp(conn_t *c, int *status, int want_body) {
    char *end = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
    if (!end) return c->rlen >= RBUF ? -1 : 0;
    size_t head = (size_t)(end - c->rbuf) + 4;
    if (c->rlen < 12 || memcmp(c->rbuf, "HTTP/1.", 7) != 0) return -1;
    *status = atoi(c->rbuf + 9);
    long cl = want_body ? -1 : 0;
    int ka = c->rbuf[7] == '1';
    for (char *p = c->rbuf; p && p < end;) {
        char *line = memchr(p, '\n', (size_t)(end - p));
        if (!line) break;
        line++;
        if (strncasecmp(line, "content-length:", 15) == 0) cl = atol(line + 15);
        else if (strncasecmp(line, "connection:", 11) == 0 || strncasecmp(line, "proxy-connection:", 17) == 0) {
            char *v = strchr(line, ':') + 1;
            while (*v == ' ') v++;
            if (strncasecmp(v, "close", 5) == 0) ka = 0;
            else if (strncasecmp(v, "keep-alive", 10) == 0) ka = 1;
        }
        p = line;
    }
    c->keepalive = ka;
    if (!want_body) return (long)head; /* a CONNECT answer: the tunnel starts after the head */
    if (cl < 0) return (long)head; /* no length: we only read the head */
    return (long)(head + (size_t)cl);
}

/* Consume n bytes from the front of rbuf. */
static void consume(conn_t *c, size_t n) {
    memmove(c->rbuf, c->rbuf + n, c->rlen - n);
    c->rlen -= n;
}

static void on_readable(conn_t *c) {
    if (c->st == ST_BULK) {
        for (;;) {
            ssize_t n = recv(c->fd, scratch, sizeof scratch, 0);
            if (n > 0) {
                c->t_op = now_ns();
                bytes_down += (uint64_t)n;
                c->down_left = (uint64_t)n >= c->down_left ? 0 : c->down_left - (uint64_t)n;
                if (c->down_left == 0 && c->up_left == 0) {
                    t_bulk_last = now_ns();
                    bulk_done++;
                    conn_close(c);
                    return;
                }
                continue;
            }
            if (n == 0) return fail(c, E_EOF);
            if (errno == EAGAIN) return;
            return fail(c, E_IO);
        }
    }
    if (c->st == ST_IDLE) {
        ssize_t n = recv(c->fd, scratch, sizeof scratch, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN)) fail(c, E_EOF);
        return;
    }
    for (;;) {
        if (c->rlen >= RBUF) return fail(c, E_PROTO);
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, RBUF - c->rlen, 0);
        if (n == 0 && cfg.mode == M_FORWARD && c->reqs > 0 && c->rlen == 0) {
            /* The server closed a persistent connection between requests without saying
             * so: HTTP allows it, a client reconnects and sends the request again. */
            if (now_ns() < t_end) reconnects++;
            conn_close(c);
            return launch(c);
        }
        if (n == 0) return fail(c, E_EOF);
        if (n < 0) {
            if (errno == EAGAIN) return;
            return fail(c, E_IO);
        }
        c->rlen += (size_t)n;
        c->t_op = now_ns();
        for (;;) { /* one read may complete several steps */
            int status = 0;
            long need;
            switch (c->st) {
            case ST_HTTP_CONNECT:
                need = parse_resp(c, &status, 0);
                if (need == 0) goto more;
                if (need < 0) return fail(c, E_PROTO);
                if (status != 200) return fail(c, E_STATUS);
                consume(c, (size_t)need);
                tunnel_ready(c);
                if (c->st != ST_RESP) return; /* closed, bulk or idle: no more parsing */
                break;
            case ST_S5_METHOD:
                if (c->rlen < 2) goto more;
                if (c->rbuf[0] != 5 || c->rbuf[1] != 2) return fail(c, E_STATUS);
                consume(c, 2);
                {
                    unsigned char a[520];
                    char ub[300];
                    const char *user = next_user(ub, sizeof ub);
                    size_t ul = strlen(user), pl = strlen(cfg.pass), o = 0;
                    if (ul > 255) ul = 255;
                    a[o++] = 1;
                    a[o++] = (unsigned char)ul;
                    memcpy(a + o, user, ul);
                    o += ul;
                    a[o++] = (unsigned char)pl;
                    memcpy(a + o, cfg.pass, pl);
                    o += pl;
                    c->st = ST_S5_AUTH;
                    if (queue_w(c, a, o) < 0) return fail(c, E_IO);
                }
                break;
            case ST_S5_AUTH:
                if (c->rlen < 2) goto more;
                if (c->rbuf[1] != 0) return fail(c, E_STATUS);
                consume(c, 2);
                {
                    unsigned char r[10] = {5, 1, 0, 1};
                    memcpy(r + 4, &cfg.target.sin_addr, 4);
                    memcpy(r + 8, &cfg.target.sin_port, 2);
                    c->st = ST_S5_REPLY;
                    if (queue_w(c, r, 10) < 0) return fail(c, E_IO);
                }
                break;
            case ST_S5_REPLY: {
                if (c->rlen < 5) goto more;
                if (c->rbuf[0] != 5) return fail(c, E_PROTO);
                if (c->rbuf[1] != 0) return fail(c, E_STATUS);
                size_t len;
                switch (c->rbuf[3]) {
                case 1: len = 10; break;
                case 4: len = 22; break;
                case 3: len = 7 + (unsigned char)c->rbuf[4]; break;
                default: return fail(c, E_PROTO);
                }
                if (c->rlen < len) goto more;
                consume(c, len);
                tunnel_ready(c);
                if (c->st != ST_RESP) return;
                break;
            }
            case ST_RESP: {
                need = parse_resp(c, &status, 1);
                if (need == 0 || (size_t)need > c->rlen) goto more;
                if (need < 0) return fail(c, E_PROTO);
                if (status != 200) return fail(c, E_STATUS);
                uint64_t t = now_ns();
                if (cfg.mode == M_IDLE) { /* the post-hold check */
                    completed++;
                    conn_close(c);
                    return;
                }
                record_latency(c, t);
                consume(c, (size_t)need);
                if (cfg.mode == M_FORWARD && c->keepalive && t < t_end) {
                    c->reqs++;
                    c->t_start = t;
                    if (send_get(c) < 0) return fail(c, E_IO);
                    break;
                }
                if (cfg.mode == M_FORWARD && t < t_end) reconnects++;
                conn_close(c);
                launch(c);
                return;
            }
            default:
                return fail(c, E_PROTO);
            }
        }
    more:;
    }
}

static void on_writable(conn_t *c) {
    if (c->st == ST_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) return fail(c, E_CONNECT);
        return begin_tunnel(c);
    }
    if (c->wlen) {
        if (flush_w(c) < 0) return fail(c, E_IO);
        if (c->wlen) return;
        if (c->st != ST_BULK) {
            ep_set(c, EPOLLIN);
            return;
        }
    }
    if (c->st == ST_BULK) {
        while (c->up_left) {
            size_t want = c->up_left < BULK_CHUNK ? (size_t)c->up_left : BULK_CHUNK;
            ssize_t n = send(c->fd, bulk_buf, want, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EAGAIN) return;
                return fail(c, E_IO);
            }
            c->t_op = now_ns();
            c->up_left -= (uint64_t)n;
            bytes_up += (uint64_t)n;
        }
        /* Upload done: stop asking for EPOLLOUT but keep the tunnel open (no half-close:
         * several proxies end the whole tunnel on the first FIN). */
        ep_set(c, EPOLLIN);
        if (c->down_left == 0) {
            t_bulk_last = now_ns();
            bulk_done++;
            conn_close(c);
        }
    }
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(double p) {
    if (!nlat) return 0;
    size_t i = (size_t)(p * (double)(nlat - 1) + 0.5);
    return (double)lat[i] / 1e6;
}

static void print_errors(void) {
    /* The load generator's own CPU: the report shows it was not the bottleneck. */
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("\"cpu_s\":%.3f,", (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
                                  (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
    printf("\"errors\":{");
    for (int i = 0; i < E_N; i++) printf("%s\"%s\":%ld", i ? "," : "", err_names[i], errors[i]);
    printf("}");
}

static conn_t *conns;

static void check_timeouts(uint64_t t) {
    uint64_t lim = (uint64_t)(cfg.timeout * 1e9);
    for (int i = 0; i < cfg.conc; i++) {
        conn_t *c = &conns[i];
        if (c->st != ST_FREE && c->st != ST_IDLE && t > c->t_op && t - c->t_op > lim) fail(c, E_TIMEOUT);
    }
}

static void loop_once(int timeout_ms) {
    struct epoll_event evs[MAX_EVENTS];
    int n = epoll_wait(ep, evs, MAX_EVENTS, timeout_ms);
    if (n < 0) {
        if (errno == EINTR) return;
        die("epoll_wait");
    }
    for (int i = 0; i < n; i++) {
        conn_t *c = evs[i].data.ptr;
        uint32_t e = evs[i].events;
        if (c->st == ST_FREE) continue;
        unsigned gen = c->gen;
        if (e & EPOLLOUT) on_writable(c);
        if (c->gen == gen && c->st != ST_FREE && (e & (EPOLLIN | EPOLLERR | EPOLLHUP))) on_readable(c);
    }
}

static int run_client(void) {
    conns = calloc((size_t)cfg.conc, sizeof *conns);
    if (!conns) die("calloc");
    for (int i = 0; i < cfg.conc; i++) conns[i].fd = -1;
    t_begin = now_ns();
    if (cfg.mode != M_CONNECT && cfg.mode != M_FORWARD) cfg.warmup = 0;
    t_measure = t_begin + (uint64_t)(cfg.warmup * 1e9);
    uint64_t hard = t_begin + (uint64_t)(cfg.max_seconds * 1e9);
    if (cfg.mode == M_CONNECT || cfg.mode == M_FORWARD)
        t_end = t_measure + (uint64_t)(cfg.duration * 1e9);
    else
        t_end = hard;
    uint64_t last_check = t_begin;

    if (cfg.mode == M_IDLE) {
        /* Open --count tunnels, --conc at a time. */
        long total = cfg.count;
        conn_t *all = calloc((size_t)total, sizeof *all);
        if (!all) die("calloc");
        for (long i = 0; i < total; i++) all[i].fd = -1;
        long next = 0;
        uint64_t t0 = now_ns();
        while (idle_open + idle_failed < total && now_ns() < hard) {
            long inflight = 0;
            for (long i = 0; i < next; i++)
                if (all[i].st != ST_FREE && all[i].st != ST_IDLE) inflight++;
            while (next < total && inflight < cfg.conc) {
                launch(&all[next++]);
                inflight++;
            }
            loop_once(50);
            uint64_t t = now_ns();
            if (t - last_check > 100000000ull) {
                last_check = t;
                for (long i = 0; i < next; i++) {
                    conn_t *c = &all[i];
                    if (c->st != ST_FREE && c->st != ST_IDLE && t > c->t_op &&
                        t - c->t_op > (uint64_t)(cfg.timeout * 1e9))
                        fail(c, E_TIMEOUT);
                }
            }
        }
        double open_s = (double)(now_ns() - t0) / 1e9;
        printf("READY {\"open\":%ld,\"failed\":%ld,\"open_seconds\":%.3f}\n", idle_open, idle_failed, open_s);
        fflush(stdout);
        /* Hold: wait for stdin to close (the harness has measured) or --hold seconds. */
        struct epoll_event e = {.events = EPOLLIN, .data.ptr = NULL};
        int stdin_watch = epoll_ctl(ep, EPOLL_CTL_ADD, 0, &e) == 0;
        uint64_t hold_end = now_ns() + (uint64_t)(cfg.hold * 1e9);
        int released = 0;
        while (!released && now_ns() < hold_end) {
            struct epoll_event evs[MAX_EVENTS];
            int n = epoll_wait(ep, evs, MAX_EVENTS, 100);
            for (int i = 0; i < n; i++) {
                if (evs[i].data.ptr == NULL) {
                    char b[64];
                    if (read(0, b, sizeof b) <= 0) released = 1;
                    else released = 1;
                    continue;
                }
                conn_t *c = evs[i].data.ptr;
                if (c->st == ST_IDLE) on_readable(c);
            }
        }
        if (stdin_watch) epoll_ctl(ep, EPOLL_CTL_DEL, 0, NULL);
        /* Check: one GET through every tunnel still open. */
        long alive_before = 0;
        idle_checking = 1;
        completed = 0;
        for (long i = 0; i < total; i++)
            if (all[i].st == ST_IDLE) {
                alive_before++;
                if (send_get(&all[i]) < 0) fail(&all[i], E_IO);
            }
        uint64_t check_end = now_ns() + 20000000000ull;
        for (;;) {
            long busy = 0;
            for (long i = 0; i < total; i++)
                if (all[i].st == ST_RESP) busy++;
            if (!busy || now_ns() > check_end) break;
            loop_once(50);
        }
        printf("{\"mode\":\"idle\",\"count\":%ld,\"open\":%ld,\"failed\":%ld,\"open_seconds\":%.3f,"
               "\"dropped_during_hold\":%ld,\"alive_after_hold\":%ld,\"answered_after_hold\":%ld,",
               total, idle_open, idle_failed, open_s, idle_dropped, alive_before, completed);
        print_errors();
        printf("}\n");
        return 0;
    }

    for (int i = 0; i < cfg.conc; i++) launch(&conns[i]);
    for (;;) {
        uint64_t t = now_ns();
        if (t >= hard) break;
        if ((cfg.mode == M_CONNECT || cfg.mode == M_FORWARD) && t >= t_end) break;
        if (cfg.mode == M_THROUGHPUT && bulk_done >= cfg.conc) break;
        loop_once(10);
        t = now_ns();
        if (t - last_check > 100000000ull) {
            last_check = t;
            check_timeouts(t);
        }
    }
    uint64_t t_stop = now_ns();
    if (cfg.mode == M_THROUGHPUT) {
        if (!t_bulk_last || bulk_done < cfg.conc) t_bulk_last = t_stop;
        double el = (double)(t_bulk_last - t_bulk_first) / 1e9;
        long ok = bulk_done - failed_total;
        bytes_down -= (uint64_t)ok; /* the acknowledgement bytes are not payload */
        printf("{\"mode\":\"throughput\",\"tunnels\":%d,\"bytes_each_way\":%llu,\"tunnels_ok\":%ld,"
               "\"bytes_up\":%llu,\"bytes_down\":%llu,\"seconds\":%.4f,\"mb_per_s\":%.2f,",
               cfg.conc, (unsigned long long)cfg.bytes, ok, (unsigned long long)bytes_up,
               (unsigned long long)bytes_down, el, el > 0 ? (double)(bytes_up + bytes_down) / el / 1e6 : 0.0);
        print_errors();
        printf("}\n");
        return 0;
    }
    double window = (double)((t_stop < t_end ? t_stop : t_end) - t_measure) / 1e9;
    qsort(lat, nlat, sizeof *lat, cmp_u64);
    printf("{\"mode\":\"%s\",\"via\":\"%s\",\"conc\":%d,\"seconds\":%.3f,\"completed\":%ld,"
           "\"rate\":%.1f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f,\"reconnects\":%ld,",
           cfg.mode == M_CONNECT ? "connect" : "forward",
           cfg.via == V_HTTP ? "http" : cfg.via == V_SOCKS5 ? "socks5" : "none", cfg.conc, window,
           completed, window > 0 ? (double)completed / window : 0.0, pct(0.5), pct(0.99),
           nlat ? (double)lat[nlat - 1] / 1e6 : 0.0, reconnects);
    print_errors();
    printf("}\n");
    (void)warm_done;
    (void)measuring_done;
    return 0;
}

/* ---------------------------------------------------------------- origin side */

static int lfd;

static void origin_accept(void) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED) return;
            if (errno == EMFILE || errno == ENFILE) {
                fprintf(stderr, "origin: accept: %s\n", strerror(errno));
                return;
            }
            die("accept");
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn_t *c = calloc(1, sizeof *c);
        if (!c) die("calloc");
        c->fd = fd;
        c->st = ST_O_REQ;
        ep_set(c, EPOLLIN);
    }
}

static conn_t *graveyard;

static void origin_free(conn_t *c) {
    conn_close(c);
    *(conn_t **)c->rbuf = graveyard;
    graveyard = c;
}

static const char ok_resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
static const char ok_close[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

/* Bulk: n bytes down, n bytes up read and dropped. One more byte ('!') goes down once all n
 * upload bytes have arrived and the n download bytes are out: the client waits for n + 1
 * bytes, so a finished tunnel proves that both directions were relayed in full. */
static void origin_bulk_write(conn_t *c) {
    while (c->down_left) {
        size_t want = c->down_left < BULK_CHUNK ? (size_t)c->down_left : BULK_CHUNK;
        ssize_t n = send(c->fd, bulk_buf, want, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) {
                ep_set(c, EPOLLIN | EPOLLOUT);
                return;
            }
            origin_free(c);
            return;
        }
        c->down_left -= (uint64_t)n;
    }
    if (c->up_left == 0 && !c->close_after) {
        ssize_t n = send(c->fd, "!", 1, MSG_NOSIGNAL);
        if (n < 0 && errno == EAGAIN) {
            ep_set(c, EPOLLIN | EPOLLOUT);
            return;
        }
        if (n < 0) {
            origin_free(c);
            return;
        }
        c->close_after = 1; /* here: the acknowledgement byte is sent */
    }
    ep_set(c, EPOLLIN);
}

static void origin_readable(conn_t *c) {
    for (;;) {
        if (c->st == ST_O_BULK) {
            ssize_t n = recv(c->fd, scratch, sizeof scratch, 0);
            if (n > 0) {
                c->up_left = (uint64_t)n >= c->up_left ? 0 : c->up_left - (uint64_t)n;
                if (c->up_left == 0 && c->down_left == 0 && !c->close_after) {
                    origin_bulk_write(c);
                    if (c->st == ST_FREE) return;
                }
                continue;
            }
            if (n < 0 && errno == EAGAIN) return;
            origin_free(c);
            return;
        }
        if (c->rlen >= RBUF) {
            origin_free(c);
            return;
        }
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, RBUF - c->rlen, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN)) {
            origin_free(c);
            return;
        }
        if (n < 0) return;
        c->rlen += (size_t)n;
        /* Answer every complete request in the buffer (pipelining included). */
        for (;;) {
            if (c->rlen >= 5 && memcmp(c->rbuf, "BULK ", 5) == 0) {
                char *nl = memchr(c->rbuf, '\n', c->rlen);
                if (!nl) break;
                c->down_left = c->up_left = strtoull(c->rbuf + 5, NULL, 10);
                size_t extra = c->rlen - (size_t)(nl - c->rbuf + 1); /* upload already here */
                c->up_left = extra >= c->up_left ? 0 : c->up_left - extra;
                c->close_after = 0;
                c->st = ST_O_BULK;
                c->rlen = 0;
                origin_bulk_write(c);
                return; /* the fd may be gone; the next readiness event continues */
            }
            char *end = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
            if (!end) break;
            size_t head = (size_t)(end - c->rbuf) + 4;
            int cl = 0;
            for (char *p = c->rbuf; p < end;) {
                char *line = memchr(p, '\n', (size_t)(end - p));
                if (!line) break;
                line++;
                if (strncasecmp(line, "connection:", 11) == 0) {
                    char *v = line + 11;
                    while (*v == ' ') v++;
                    if (strncasecmp(v, "close", 5) == 0) cl = 1;
                }
                p = line;
            }
            consume(c, head);
            const char *r = cl ? ok_close : ok_resp;
            size_t rl = cl ? sizeof ok_close - 1 : sizeof ok_resp - 1;
            if (queue_w(c, r, rl) < 0) {
                origin_free(c);
                return;
            }
            if (cl) {
                c->close_after = 1;
                if (!c->wlen) {
                    origin_free(c);
                    return;
                }
            }
        }
    }
}

static void origin_writable(conn_t *c) {
    if (c->st == ST_O_BULK) {
        origin_bulk_write(c);
        return;
    }
    if (flush_w(c) < 0 || (!c->wlen && c->close_after)) {
        origin_free(c);
        return;
    }
    if (!c->wlen) ep_set(c, EPOLLIN);
}

static int run_origin(void) {
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (lfd < 0) die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&cfg.listen_addr, sizeof cfg.listen_addr) < 0) die("bind");
    if (listen(lfd, cfg.backlog) < 0) die("listen");
    struct sockaddr_in a;
    socklen_t al = sizeof a;
    getsockname(lfd, (struct sockaddr *)&a, &al);
    printf("PORT %d\n", ntohs(a.sin_port));
    fflush(stdout);
    struct epoll_event le = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &le);
    uint64_t hard = now_ns() + (uint64_t)(cfg.max_seconds * 1e9);
    while (now_ns() < hard) {
        struct epoll_event evs[MAX_EVENTS];
        int n = epoll_wait(ep, evs, MAX_EVENTS, 200);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (!c) {
                origin_accept();
                continue;
            }
            if (c->st == ST_FREE) continue;
            if (evs[i].events & EPOLLOUT) origin_writable(c);
            if (c->st != ST_FREE && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) origin_readable(c);
        }
        /* Connections closed in this batch are freed only now: a later event of the same
         * batch may still point at them. */
        while (graveyard) {
            conn_t *c = graveyard;
            graveyard = *(conn_t **)c->rbuf;
            free(c);
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- main */

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen MODE [options]\n"
            "  MODE: origin | connect | forward | throughput | idle\n"
            "  --listen HOST:PORT   origin: address (port 0: any; printed as 'PORT n')\n"
            "  --backlog N          origin: listen backlog (4096)\n"
            "  --proxy HOST:PORT    proxy to use\n"
            "  --via http|socks5|none  tunnel kind (none: straight to --target)\n"
            "  --target HOST:PORT   the origin\n"
            "  --user U --pass P    proxy credentials (Basic / RFC 1929)\n"
            "  --sessions N         username U-session-sK, K cycling over N sessions\n"
            "  -c N                 concurrency (tunnels for throughput, openers for idle)\n"
            "  -n N                 idle: number of tunnels\n"
            "  -d SECONDS           rate modes: measuring window (5)\n"
            "  --warmup SECONDS     rate modes: not measured (0.5)\n"
            "  --bytes N            throughput: bytes each way per tunnel\n"
            "  --hold SECONDS       idle: longest hold (60)\n"
            "  --timeout SECONDS    per-step timeout (10)\n"
            "  --max-seconds S      hard cap on the whole run (120)\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    const char *m = argv[1];
    if (!strcmp(m, "origin")) cfg.mode = M_ORIGIN;
    else if (!strcmp(m, "connect")) cfg.mode = M_CONNECT;
    else if (!strcmp(m, "socks5")) { cfg.mode = M_CONNECT; cfg.via = V_SOCKS5; }
    else if (!strcmp(m, "forward")) cfg.mode = M_FORWARD;
    else if (!strcmp(m, "throughput")) cfg.mode = M_THROUGHPUT;
    else if (!strcmp(m, "idle")) cfg.mode = M_IDLE;
    else usage();
    cfg.conc = 1;
    cfg.duration = 5;
    cfg.warmup = 0.5;
    cfg.timeout = 10;
    cfg.hold = 60;
    cfg.max_seconds = 120;
    cfg.backlog = 4096;
    cfg.bytes = 1 << 20;
    parse_addr("127.0.0.1:0", &cfg.listen_addr);
    int have_proxy = 0, have_target = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) usage();
        i++;
        if (!strcmp(a, "--listen")) { if (parse_addr(v, &cfg.listen_addr)) usage(); }
        else if (!strcmp(a, "--backlog")) cfg.backlog = atoi(v);
        else if (!strcmp(a, "--proxy")) { if (parse_addr(v, &cfg.proxy)) usage(); have_proxy = 1; }
        else if (!strcmp(a, "--target")) {
            if (parse_addr(v, &cfg.target)) usage();
            snprintf(cfg.target_str, sizeof cfg.target_str, "%s", v);
            have_target = 1;
        }
        else if (!strcmp(a, "--via")) {
            if (!strcmp(v, "http")) cfg.via = V_HTTP;
            else if (!strcmp(v, "socks5")) cfg.via = V_SOCKS5;
            else if (!strcmp(v, "none")) cfg.via = V_NONE;
            else usage();
        }
        else if (!strcmp(a, "--user")) snprintf(cfg.user, sizeof cfg.user, "%s", v);
        else if (!strcmp(a, "--pass")) snprintf(cfg.pass, sizeof cfg.pass, "%s", v);
        else if (!strcmp(a, "--sessions")) cfg.sessions = atol(v);
        else if (!strcmp(a, "-c")) cfg.conc = atoi(v);
        else if (!strcmp(a, "-n")) cfg.count = atol(v);
        else if (!strcmp(a, "-d")) cfg.duration = atof(v);
        else if (!strcmp(a, "--warmup")) cfg.warmup = atof(v);
        else if (!strcmp(a, "--bytes")) cfg.bytes = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--hold")) cfg.hold = atof(v);
        else if (!strcmp(a, "--timeout")) cfg.timeout = atof(v);
        else if (!strcmp(a, "--max-seconds")) cfg.max_seconds = atof(v);
        else usage();
    }
    ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    memset(bulk_buf, 'x', sizeof bulk_buf);
    if (cfg.mode == M_ORIGIN) return run_origin();
    if (!have_target || (cfg.via != V_NONE && !have_proxy) || cfg.conc < 1) usage();
    if (cfg.mode == M_IDLE && cfg.count < 1) usage();
    if (cfg.mode == M_THROUGHPUT) cfg.count = cfg.conc;
    if (cfg.mode == M_FORWARD && cfg.via == V_SOCKS5) usage();
    if (strlen(cfg.user) > 255 || strlen(cfg.pass) > 255) usage();
    char up[520];
    snprintf(up, sizeof up, "%s:%s", cfg.user, cfg.pass);
    b64((const unsigned char *)up, strlen(up), cfg.auth_b64);
    return run_client();
}
