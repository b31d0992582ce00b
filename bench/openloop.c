/* Open-loop load: money-moving POSTs at a constant rate, each latency measured from the time the request was due,
 * not from when a connection was free to send it (so a slow server is not excused by the client waiting for it:
 * no coordinated omission). wrk is closed-loop and wrk2 is not packaged here; this is the small generator the
 * bench compiles with the machine's C compiler (python -m bench builds it on first use).
 *
 * openloop HOST PORT PATH RATE_PER_S DURATION_S CONNECTIONS API_KEY USERS PREFIX [WARMUP_S]
 * Sends at RATE_PER_S for WARMUP_S (default 0) and then DURATION_S seconds, on the same connections; only what was
 * due after the warm-up is measured. Prints one line: BENCH_RESULT {json} with the count of each status, latency
 * percentiles in microseconds, late starts (sent over 1 ms after they were due: no connection was free) and
 * errors (connections closed with a request on them, requests unanswered DRAIN_TIMEOUT_NS after the last was due).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define BUFFER_BYTES 16384
#define STATUS_MAX 600
#define LATE_NS 1000000                  /* a request sent later than this after its due time is a late start */
#define DRAIN_TIMEOUT_NS 10000000000LL   /* as wrk's --timeout=10s: then what is unanswered counts as an error */

typedef struct {
    int fd;
    int busy;
    int measured;    /* the request now on this connection was due after the warm-up */
    int64_t due_ns;  /* when the request now on this connection was due */
    char out[2048];
    size_t out_len, out_sent;
    char in[BUFFER_BYTES];
    size_t in_len;
} Connection;

static const char *host, *path, *api_key, *prefix;
static int port, users, epoll;
static Connection *connections;
static int64_t sent_count, done_count, late_count, statuses[STATUS_MAX], errors, warmup_failures;
static int64_t *latencies;

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static int open_connection(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &address.sin_addr);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&address, sizeof address) < 0 && errno != EINPROGRESS) {
        perror("connect");
        exit(2);
    }
    return fd;
}

static void prepare(Connection *c, int64_t sequence) {
    char body[256];
    int body_len = snprintf(body, sizeof body, "{\"user_id\":\"u%d\",\"asset\":\"GOLD\",\"amount\":%d}",
                            1 + rand() % users, 1 + rand() % 1000);
    c->out_len = (size_t)snprintf(c->out, sizeof c->out,
                                  "POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
                                  "Idempotency-Key: ol-%s-%lld\r\nContent-Type: application/json\r\n"
                                  "Content-Length: %d\r\n\r\n%s",
                                  path, host, api_key, prefix, (long long)sequence, body_len, body);
    c->out_sent = 0;
    c->in_len = 0;
}

/* The connection broke (or the server closed it while idle, as keep-alive timeouts do): a request on it is lost
 * and counted once, here; the connection is replaced. */
static void reconnect(Connection *c) {
    errors += c->busy;
    c->busy = 0;
    c->in_len = 0;
    epoll_ctl(epoll, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = open_connection();
    struct epoll_event event = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.u32 = (uint32_t)(c - connections)};
    epoll_ctl(epoll, EPOLL_CTL_ADD, c->fd, &event);
}

/* Writes what the socket takes now; EPOLLOUT brings us back for the rest. False when the connection broke. */
static int flush_out(Connection *c) {
    while (c->out_sent < c->out_len) {
        ssize_t n = write(c->fd, c->out + c->out_sent, c->out_len - c->out_sent);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return 1;
            reconnect(c);
            return 0;
        }
        c->out_sent += (size_t)n;
    }
    return 1;
}

/* A complete response in c->in: its status, or 0 while it is incomplete. */
static int complete_status(Connection *c) {
    c->in[c->in_len] = 0;
    char *end = strstr(c->in, "\r\n\r\n");
    if (!end) return 0;
    long length = 0;
    for (char *line = strstr(c->in, "\r\n"); line && line < end; line = strstr(line + 2, "\r\n"))
        if (strncasecmp(line + 2, "content-length:", 15) == 0) length = strtol(line + 17, NULL, 10);
    if ((size_t)(end + 4 - c->in) + (size_t)length > c->in_len) return 0;
    return atoi(c->in + 9);
}

static int compare(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 10 && argc != 11) {
        fprintf(stderr, "usage: %s HOST PORT PATH RATE_PER_S DURATION_S CONNECTIONS API_KEY USERS PREFIX [WARMUP_S]\n",
                argv[0]);
        return 2;
    }
    host = argv[1], port = atoi(argv[2]), path = argv[3], api_key = argv[7], users = atoi(argv[8]), prefix = argv[9];
    double rate = atof(argv[4]);
    int duration_s = atoi(argv[5]), count = atoi(argv[6]), warmup_s = argc == 11 ? atoi(argv[10]) : 0;
    if (rate <= 0 || duration_s <= 0 || count <= 0 || users <= 0 || warmup_s < 0) {
        fprintf(stderr, "RATE_PER_S, DURATION_S, CONNECTIONS and USERS must be > 0, WARMUP_S >= 0\n");
        return 2;
    }
    /* Requests 0 .. warmup_count - 1 are the warm-up's: sent as the others, not measured. */
    int64_t warmup_count = (int64_t)(rate * warmup_s), measured_planned = (int64_t)(rate * duration_s);
    int64_t planned = warmup_count + measured_planned, interval_ns = (int64_t)(1e9 / rate);
    int64_t answered = 0; /* measured or not */
    latencies = calloc((size_t)measured_planned + 1, sizeof *latencies);
    connections = calloc((size_t)count, sizeof *connections);
    epoll = epoll_create1(0);
    int timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct epoll_event event = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    epoll_ctl(epoll, EPOLL_CTL_ADD, timer, &event);
    for (int i = 0; i < count; i++) {
        connections[i].fd = open_connection();
        event = (struct epoll_event){.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.u32 = (uint32_t)i};
        epoll_ctl(epoll, EPOLL_CTL_ADD, connections[i].fd, &event);
    }
    srand(42);
    int64_t start = now_ns() + 100000000; /* connections settle for 100 ms */
    int64_t measured_start = start + warmup_count * interval_ns, last_due = start + (planned - 1) * interval_ns;
    struct epoll_event ready[256];
    while (answered + errors < planned) {
        int64_t now = now_ns();
        if (sent_count == planned && now > last_due + DRAIN_TIMEOUT_NS) {
            errors = planned - answered; /* unanswered: the server never replied */
            break;
        }
        /* Send what is due on free connections; what finds none waits, its latency counting from when it was due. */
        for (int i = 0; i < count && sent_count < planned && start + sent_count * interval_ns <= now; i++) {
            Connection *c = &connections[i];
            if (c->busy) continue;
            c->busy = 1;
            c->measured = sent_count >= warmup_count;
            c->due_ns = start + sent_count * interval_ns;
            if (c->measured && now - c->due_ns > LATE_NS) late_count++;
            prepare(c, sent_count++);
            flush_out(c);
        }
        /* Wake at the next due time; when it has passed (every connection busy), only a response can free one:
         * an expired timer would wake us at once, again and again, and take the CPU the server needs. */
        int64_t next = start + sent_count * interval_ns;
        struct itimerspec when = {0};
        if (sent_count < planned && next > now) when.it_value = (struct timespec){next / 1000000000, next % 1000000000};
        timerfd_settime(timer, TFD_TIMER_ABSTIME, &when, NULL);
        int n = epoll_wait(epoll, ready, 256, 1000);
        for (int k = 0; k < n; k++) {
            if (ready[k].data.u32 == UINT32_MAX) {
                uint64_t expirations;
                if (read(timer, &expirations, sizeof expirations) < 0 && errno != EAGAIN) perror("timer");
                continue;
            }
            Connection *c = &connections[ready[k].data.u32];
            if ((ready[k].events & EPOLLOUT) && !flush_out(c)) continue;
            for (;;) {
                ssize_t got = read(c->fd, c->in + c->in_len, BUFFER_BYTES - 1 - c->in_len);
                if (got < 0 && errno == EINTR) continue;
                if (got <= 0) {
                    if (got == 0 || errno != EAGAIN) reconnect(c);
                    break;
                }
                c->in_len += (size_t)got;
                int status = complete_status(c);
                if (status > 0 && c->busy) {
                    answered++;
                    if (c->measured) {
                        latencies[done_count++] = now_ns() - c->due_ns;
                        statuses[status < STATUS_MAX ? status : 0]++;
                    } else if (status >= 300) {
                        warmup_failures++;
                    }
                    c->busy = 0;
                    c->in_len = 0;
                }
            }
        }
    }
    int64_t elapsed = now_ns() - measured_start;
    qsort(latencies, (size_t)done_count, sizeof *latencies, compare);
#define AT(q) (done_count ? latencies[(int64_t)((q) * (double)(done_count - 1))] / 1000 : 0)
    printf("BENCH_RESULT {\"requests\": %lld, \"planned\": %lld, \"rate\": %.1f, \"duration_us\": %lld, "
           "\"late_starts\": %lld, \"errors\": %lld, \"warmup_failures\": %lld, \"p50_us\": %lld, "
           "\"p90_us\": %lld, \"p99_us\": %lld, \"p999_us\": %lld, \"max_us\": %lld, \"statuses\": {",
           (long long)done_count, (long long)measured_planned, rate, (long long)(elapsed / 1000),
           (long long)late_count, (long long)errors, (long long)warmup_failures,
           (long long)AT(0.50), (long long)AT(0.90), (long long)AT(0.99), (long long)AT(0.999), (long long)AT(1.0));
    const char *separator = "";
    for (int s = 0; s < STATUS_MAX; s++)
        if (statuses[s]) printf("%s\"%d\": %lld", separator, s, (long long)statuses[s]), separator = ", ";
    printf("}}\n");
    return 0;
}
