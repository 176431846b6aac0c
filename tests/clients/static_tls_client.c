/* A TLS client linked statically against OpenSSL (libssl.a): its SSL_read/SSL_write live in the
 * executable's own symbol table, not in libssl.so. Used by tests/tests/tls.rs.
 *
 * usage: static_tls_client PORT PATH DELAY_MS
 * Waits DELAY_MS, sends "GET PATH" over TLS to 127.0.0.1:PORT with Connection: close, and
 * prints the number of response bytes (head and body) it read. */
#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s PORT PATH DELAY_MS\n", argv[0]);
        return 2;
    }
    usleep((useconds_t)atoi(argv[3]) * 1000);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[1]));
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror("connect");
        return 1;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1) {
        ERR_print_errors_fp(stderr);
        return 1;
    }
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: static.test\r\nUser-Agent: static-tls-client\r\n"
                     "Connection: close\r\n\r\n",
                     argv[2]);
    if (SSL_write(ssl, req, n) != n) {
        ERR_print_errors_fp(stderr);
        return 1;
    }
    long total = 0;
    char buf[4096];
    for (;;) {
        int r = SSL_read(ssl, buf, sizeof buf);
        if (r <= 0)
            break;
        total += r;
    }
    printf("%ld\n", total);
    SSL_shutdown(ssl);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
    return 0;
}
