// An HTTPS server and client on Go's own crypto/tls, for the TLS end-to-end tests.
//
//	go_tls serve ADDR CERT KEY
//	    /a -> "body of a\n", /missing -> 404 "missing\n", /echo reads the body -> "echoed\n",
//	    /big -> 150000 bytes of 'x' (the same answers as the tests' nginx).
//	go_tls get h1|h2 WAIT_MS LINGER_MS REQUEST...
//	    REQUEST is "GET URL" or "POST URL" (a 3000-byte body); waits WAIT_MS after start before
//	    the first call and LINGER_MS after the last; prints "PROTO STATUS BODY_BYTES" per call.
package main

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

func serve(addr, cert, key string) {
	mux := http.NewServeMux()
	mux.HandleFunc("/a", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "body of a\n")
	})
	mux.HandleFunc("/missing", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, "missing\n")
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "echoed\n")
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		w.Write(bytes.Repeat([]byte("x"), 150000))
	})
	fmt.Println("ready")
	err := http.ListenAndServeTLS(addr, cert, key, mux)
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func get(proto string, waitMs, lingerMs int, requests []string) {
	t := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	if proto == "h2" {
		t.ForceAttemptHTTP2 = true
	} else {
		// A non-nil empty map turns HTTP/2 off: ALPN offers http/1.1 only.
		t.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	client := &http.Client{Transport: t}
	time.Sleep(time.Duration(waitMs) * time.Millisecond)
	for _, req := range requests {
		method, url, _ := strings.Cut(req, " ")
		var resp *http.Response
		var err error
		if method == "POST" {
			resp, err = client.Post(url, "application/json", bytes.NewReader(bytes.Repeat([]byte("y"), 3000)))
		} else {
			resp, err = client.Get(url)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Println(resp.Proto, resp.StatusCode, len(body))
	}
	time.Sleep(time.Duration(lingerMs) * time.Millisecond)
}

func main() {
	if len(os.Args) >= 5 && os.Args[1] == "serve" {
		serve(os.Args[2], os.Args[3], os.Args[4])
	}
	if len(os.Args) >= 5 && os.Args[1] == "get" {
		wait, _ := strconv.Atoi(os.Args[3])
		linger, _ := strconv.Atoi(os.Args[4])
		get(os.Args[2], wait, linger, os.Args[5:])
		return
	}
	fmt.Fprintln(os.Stderr, "usage: go_tls serve ADDR CERT KEY | go_tls get h1|h2 WAIT_MS LINGER_MS REQUEST...")
	os.Exit(2)
}
