// The probe: a small static test tool that runs inside Palisade sandboxes on the e2e node and
// reports, one JSON line per check, what the sandbox could reach, read, write and see. It is
// also the "outside world" test servers (serve), the pod-sandbox image (pause) and the demo
// agent (demo). Test harness only; the interface is documented in ../README.md.
package main

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Result is one line of output.
type Result struct {
	Check  string `json:"check"`
	Result string `json:"result"`
	Detail string `json:"detail,omitempty"`
	// Milliseconds the check took.
	Ms int64 `json:"ms"`
	// Unix milliseconds when it ended (loop mode).
	At int64 `json:"at,omitempty"`
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	switch os.Args[1] {
	case "check":
		os.Exit(check(os.Args[2:]))
	case "loop":
		os.Exit(loop(os.Args[2:]))
	case "serve":
		os.Exit(serve(os.Args[2:]))
	case "pause":
		pause()
	case "forward":
		os.Exit(forward(os.Args[2:]))
	case "demo":
		os.Exit(demo(os.Args[1:]))
	case "-h", "--help", "help":
		usage()
	default:
		// Under another name (e.g. `python -m analyst` in a demo image) it is the demo agent.
		if filepath.Base(os.Args[0]) != "probe" {
			os.Exit(demo(os.Args))
		}
		fmt.Fprintf(os.Stderr, "probe: unknown command %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  probe check [--timeout=2s] CHECK...     one JSON line per check
  probe loop [--interval=100ms] [--for=30s] [--ignore-sigterm] CHECK...
                                          the checks again and again, one line per attempt
  probe serve [--tcp=ADDR:PORT,...] [--udp=ADDR:PORT,...] [--http=ADDR:PORT,...]
              [--packages=ADDR --packages-cert=FILE --packages-key=FILE]
                                          echo servers (TCP, UDP), a fake metadata server and
                                          a package index (HTTP on ADDR:80, HTTPS on ADDR:443)
  probe pause                             wait for SIGTERM/SIGINT (the pod-sandbox image)
  probe forward LISTEN TARGET             forward TCP connections (the node reaches the API server)
  probe demo [CHECK...]                   the demo agent: human-readable lines
checks:
  tcp:HOST:PORT    connected | refused | timeout | unreachable | error
  udp:HOST:PORT    connected (an answer came back) | refused | timeout | error
  http:URL         the HTTP status (e.g. 200) | refused | timeout | error
  dns:NAME         resolved (addresses in detail) | nxdomain | timeout | error
  read:PATH        ok | denied | missing | error
  write:PATH       ok | denied | readonly | missing | error
  list:PATH        ok (entries in detail) | denied | missing | error
  id               ok, detail "uid=.. gid=.. groups=.."
  token[:PATH]     present (audience in detail) | absent   (default path: the service-account token)
  kernel           gvisor | linux (detail: /proc/version)
  syscall:NAME     allowed | eperm | enosys | error   (NAME: unshare, mount, ptrace, keyctl, personality, setns)
  sleep:DURATION   ok (waits, e.g. to outlive a timeout)
  isolated:HOST:PORT  ok once 3 TCP connections in a row there fail (refused, timeout, unreachable:
                   the pod's rules are in place) | timeout (30 s)
`)
}

var timeout = 2 * time.Second

func check(args []string) int {
	fs := flag.NewFlagSet("check", flag.ExitOnError)
	fs.DurationVar(&timeout, "timeout", timeout, "time allowed per network check")
	_ = fs.Parse(args)
	enc := json.NewEncoder(os.Stdout)
	for _, c := range fs.Args() {
		_ = enc.Encode(run(c))
	}
	return 0
}

func loop(args []string) int {
	fs := flag.NewFlagSet("loop", flag.ExitOnError)
	interval := fs.Duration("interval", 100*time.Millisecond, "pause between rounds")
	total := fs.Duration("for", 30*time.Second, "how long to go on (0: until stopped)")
	fs.DurationVar(&timeout, "timeout", 500*time.Millisecond, "time allowed per network check")
	ignoreTerm := fs.Bool("ignore-sigterm", false, "go on after SIGTERM (until SIGKILL)")
	_ = fs.Parse(args)
	if *ignoreTerm {
		signal.Ignore(syscall.SIGTERM)
	}
	enc := json.NewEncoder(os.Stdout)
	stop := time.Now().Add(*total)
	for *total == 0 || time.Now().Before(stop) {
		for _, c := range fs.Args() {
			r := run(c)
			r.At = time.Now().UnixMilli()
			_ = enc.Encode(r)
		}
		time.Sleep(*interval)
	}
	return 0
}

func run(c string) Result {
	start := time.Now()
	kind, arg, _ := strings.Cut(c, ":")
	var result, detail string
	switch kind {
	case "tcp":
		result, detail = dialTCP(arg)
	case "udp":
		result, detail = dialUDP(arg)
	case "http", "https":
		result, detail = get(c)
	case "dns":
		result, detail = lookup(arg)
	case "read":
		result, detail = read(arg)
	case "write":
		result, detail = write(arg)
	case "list":
		result, detail = list(arg)
	case "id":
		result, detail = "ok", ids()
	case "token":
		result, detail = token(arg)
	case "kernel":
		result, detail = kernel()
	case "syscall":
		result, detail = trySyscall(arg)
	case "isolated":
		result, detail = waitIsolated(arg)
	case "sleep":
		d, err := time.ParseDuration(arg)
		if err != nil {
			result, detail = "error", err.Error()
		} else {
			time.Sleep(d)
			result = "ok"
		}
	default:
		result, detail = "error", "unknown check "+kind
	}
	return Result{Check: c, Result: result, Detail: detail, Ms: time.Since(start).Milliseconds()}
}

// isolatedAfter is how many connections in a row must fail before waitIsolated trusts it: one
// failure may be a passing hiccup (a dropped SYN, a slow answer) before the rules are in place.
const isolatedAfter = 3

// waitIsolated waits until TCP connections to addr (a destination the sandbox's policy denies
// but an unfiltered pod reaches, such as the kubernetes Service) no longer succeed: the network
// plugin has programmed the pod's rules. That is isolatedAfter attempts in a row refused, timed
// out or unreachable; a connection, or any other error, starts the count again. "ok" with the
// time waited, or "timeout" after 30 s without that.
func waitIsolated(addr string) (string, string) {
	start := time.Now()
	failed := 0
	for time.Since(start) < 30*time.Second {
		conn, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
		if err == nil {
			conn.Close()
			failed = 0
		} else if r, _ := netResult(err); r == "refused" || r == "timeout" || r == "unreachable" {
			failed++
			if failed == isolatedAfter {
				return "ok", fmt.Sprintf("isolated after %d ms (%d attempts in a row failed, the last: %v)",
					time.Since(start).Milliseconds(), failed, err)
			}
		} else {
			failed = 0
		}
		time.Sleep(20 * time.Millisecond)
	}
	return "timeout", fmt.Sprintf("not %d failed connections in a row in 30 s", isolatedAfter)
}

// netResult names a network error.
func netResult(err error) (string, string) {
	switch {
	case err == nil:
		return "connected", ""
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused", err.Error()
	case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EHOSTUNREACH):
		return "unreachable", err.Error()
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return "timeout", err.Error()
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout", err.Error()
	}
	return "error", err.Error()
}

func dialTCP(addr string) (string, string) {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return netResult(err)
	}
	defer conn.Close()
	return "connected", conn.RemoteAddr().String()
}

func dialUDP(addr string) (string, string) {
	conn, err := net.DialTimeout("udp", addr, timeout)
	if err != nil {
		return netResult(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := conn.Write([]byte("probe")); err != nil {
		return netResult(err)
	}
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	if err != nil {
		return netResult(err)
	}
	return "connected", string(buf[:n])
}

func get(url string) (string, string) {
	client := http.Client{Timeout: timeout}
	resp, err := client.Get(url)
	if err != nil {
		r, d := netResult(err)
		return r, d
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	return fmt.Sprint(resp.StatusCode), strings.TrimSpace(string(body))
}

func lookup(name string) (string, string) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupHost(ctx, name)
	if err != nil {
		var de *net.DNSError
		switch {
		case errors.As(err, &de) && de.IsNotFound:
			return "nxdomain", err.Error()
		case errors.As(err, &de) && de.IsTimeout, errors.Is(err, context.DeadlineExceeded):
			return "timeout", err.Error()
		}
		return "error", err.Error()
	}
	return "resolved", strings.Join(addrs, ",")
}

func fileResult(err error) (string, string) {
	switch {
	case err == nil:
		return "ok", ""
	case errors.Is(err, os.ErrPermission):
		return "denied", err.Error()
	case errors.Is(err, syscall.EROFS):
		return "readonly", err.Error()
	case errors.Is(err, os.ErrNotExist):
		return "missing", err.Error()
	}
	return "error", err.Error()
}

func read(path string) (string, string) {
	f, err := os.Open(path)
	if err != nil {
		return fileResult(err)
	}
	defer f.Close()
	buf := make([]byte, 64)
	n, err := f.Read(buf)
	if err != nil && err != io.EOF {
		return fileResult(err)
	}
	return "ok", string(buf[:n])
}

func write(path string) (string, string) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fileResult(err)
	}
	_, err = f.WriteString("written by the probe\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return fileResult(err)
}

func list(path string) (string, string) {
	entries, err := os.ReadDir(path)
	if err != nil {
		return fileResult(err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return "ok", strings.Join(names, ",")
}

func ids() string {
	groups, _ := os.Getgroups()
	return fmt.Sprintf("uid=%d gid=%d groups=%v", os.Getuid(), os.Getgid(), groups)
}

const serviceAccountToken = "/var/run/secrets/kubernetes.io/serviceaccount/token"

func token(path string) (string, string) {
	if path == "" {
		path = serviceAccountToken
	}
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "absent", ""
		}
		return "error", err.Error()
	}
	// The audience, from the JWT's payload (not verified: only what the pod was given).
	parts := strings.Split(strings.TrimSpace(string(data)), ".")
	if len(parts) != 3 {
		return "present", "not a JWT"
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "present", "payload: " + err.Error()
	}
	var claims struct {
		Aud any `json:"aud"`
	}
	_ = json.Unmarshal(payload, &claims)
	return "present", fmt.Sprint(claims.Aud)
}

func kernel() (string, string) {
	v, err := os.ReadFile("/proc/version")
	if err != nil {
		return "error", err.Error()
	}
	version := strings.TrimSpace(string(v))
	// gVisor's sentry reports a made-up Linux version and its own boot messages.
	if out, err := dmesg(); err == nil && strings.Contains(out, "gVisor") {
		return "gvisor", version
	}
	return "linux", version
}

// dmesg reads the kernel log with syslog(2) (SYSLOG_ACTION_READ_ALL), as dmesg(1) does.
func dmesg() (string, error) {
	buf := make([]byte, 1<<16)
	n, err := syscall.Klogctl(3, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

func trySyscall(name string) (string, string) {
	var err error
	switch name {
	case "unshare":
		err = syscall.Unshare(syscall.CLONE_NEWUTS)
	case "mount":
		// On a directory of its own, undone at once.
		dir, derr := os.MkdirTemp("", "probe-mount")
		if derr != nil {
			return "error", derr.Error()
		}
		defer os.Remove(dir)
		if err = syscall.Mount("none", dir, "tmpfs", 0, ""); err == nil {
			_ = syscall.Unmount(dir, 0)
		}
	case "ptrace":
		_, _, e := syscall.Syscall(syscall.SYS_PTRACE, syscall.PTRACE_TRACEME, 0, 0)
		if e != 0 {
			err = e
		}
	case "keyctl":
		// KEYCTL_GET_KEYRING_ID of the session keyring.
		_, _, e := syscall.Syscall(syscall.SYS_KEYCTL, 0, ^uintptr(2), 0)
		if e != 0 {
			err = e
		}
	case "personality":
		_, _, e := syscall.Syscall(syscall.SYS_PERSONALITY, 0xffffffff, 0, 0)
		if e != 0 {
			err = e
		}
	case "setns":
		err = syscall.EINVAL
		if f, ferr := os.Open("/proc/self/ns/uts"); ferr == nil {
			_, _, e := syscall.Syscall(308, f.Fd(), 0, 0)
			if e != 0 {
				err = e
			} else {
				err = nil
			}
			f.Close()
		}
	default:
		return "error", "unknown syscall " + name
	}
	switch {
	case err == nil:
		return "allowed", ""
	case errors.Is(err, syscall.EPERM):
		return "eperm", err.Error()
	case errors.Is(err, syscall.ENOSYS):
		return "enosys", err.Error()
	}
	// Another error means the call was made and the kernel answered (not filtered).
	return "allowed", err.Error()
}

func pause() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	os.Exit(0)
}

func serve(args []string) int {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	tcp := fs.String("tcp", "", "comma-separated ADDR:PORT to echo on (TCP)")
	udp := fs.String("udp", "", "comma-separated ADDR:PORT to answer on (UDP)")
	web := fs.String("http", "", "comma-separated ADDR:PORT of fake metadata servers (HTTP)")
	packages := fs.String("packages", "", "ADDR of the package index (HTTP on port 80, HTTPS on 443)")
	packagesCert := fs.String("packages-cert", "", "PEM certificate (chain) of the package index")
	packagesKey := fs.String("packages-key", "", "PEM key of the package index")
	_ = fs.Parse(args)
	split := func(s string) []string {
		if s == "" {
			return nil
		}
		return strings.Split(s, ",")
	}
	errs := make(chan error, 1)
	for _, a := range split(*tcp) {
		l, err := net.Listen("tcp", a)
		if err != nil {
			fmt.Fprintln(os.Stderr, "probe serve:", err)
			return 1
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					errs <- err
					return
				}
				go func() {
					defer c.Close()
					_ = c.SetDeadline(time.Now().Add(10 * time.Second))
					fmt.Fprintf(c, "hello from %s\n", c.LocalAddr())
					_, _ = io.Copy(c, c)
				}()
			}
		}()
	}
	for _, a := range split(*udp) {
		pc, err := net.ListenPacket("udp", a)
		if err != nil {
			fmt.Fprintln(os.Stderr, "probe serve:", err)
			return 1
		}
		go func() {
			buf := make([]byte, 512)
			for {
				_, from, err := pc.ReadFrom(buf)
				if err != nil {
					errs <- err
					return
				}
				_, _ = pc.WriteTo([]byte("pong from "+pc.LocalAddr().String()), from)
			}
		}()
	}
	for _, a := range split(*web) {
		l, err := net.Listen("tcp", a)
		if err != nil {
			fmt.Fprintln(os.Stderr, "probe serve:", err)
			return 1
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			// Looks like a cloud metadata service: reaching it at all is the finding. Every
			// request is logged, so a test can tell that one never arrived.
			fmt.Printf("metadata request: host=%s path=%s from=%s\n", r.Host, r.URL.Path, r.RemoteAddr)
			fmt.Fprintf(w, "fake metadata service at %s: %s\n", r.Host, r.URL.Path)
		})
		go func() { errs <- http.Serve(l, mux) }()
	}
	if *packages != "" {
		if err := servePackages(*packages, *packagesCert, *packagesKey, errs); err != nil {
			fmt.Fprintln(os.Stderr, "probe serve:", err)
			return 1
		}
	}
	fmt.Println("probe serve: ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-sig:
		return 0
	case err := <-errs:
		fmt.Fprintln(os.Stderr, "probe serve:", err)
		return 1
	}
}

// The one package of the index: a wheel made at start, so nothing binary is checked in.
const wheelName = "palisade_hello-1.0-py3-none-any.whl"

// wheel builds the package palisade-hello 1.0 (module palisade_hello, whose GREETING says
// where it came from), with a RECORD of sha256 digests as the wheel format asks.
func wheel() ([]byte, error) {
	files := []struct{ name, body string }{
		{"palisade_hello/__init__.py", "GREETING = \"hello from the package index of the e2e world\"\n"},
		{"palisade_hello-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: palisade-hello\nVersion: 1.0\nSummary: e2e test package\n"},
		{"palisade_hello-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: palisade-e2e-probe\nRoot-Is-Purelib: true\nTag: py3-none-any\n"},
	}
	var buf bytes.Buffer
	z := zip.NewWriter(&buf)
	record := ""
	for _, f := range files {
		w, err := z.Create(f.name)
		if err != nil {
			return nil, err
		}
		if _, err := io.WriteString(w, f.body); err != nil {
			return nil, err
		}
		sum := sha256.Sum256([]byte(f.body))
		record += fmt.Sprintf("%s,sha256=%s,%d\n", f.name, base64.RawURLEncoding.EncodeToString(sum[:]), len(f.body))
	}
	record += "palisade_hello-1.0.dist-info/RECORD,,\n"
	w, err := z.Create("palisade_hello-1.0.dist-info/RECORD")
	if err != nil {
		return nil, err
	}
	if _, err := io.WriteString(w, record); err != nil {
		return nil, err
	}
	if err := z.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// servePackages serves a package index (PEP 503 simple API) with one wheel, over HTTP on
// addr:80 and HTTPS on addr:443, and /hello, which says which of the two answered and for
// which name. Each request is logged.
func servePackages(addr, certFile, keyFile string, errs chan<- error) error {
	whl, err := wheel()
	if err != nil {
		return err
	}
	sum := sha256.Sum256(whl)
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		scheme := "http"
		if r.TLS != nil {
			scheme = "https (server name " + r.TLS.ServerName + ")"
		}
		fmt.Fprintf(w, "hello from the package index: host %s over %s\n", r.Host, scheme)
	})
	mux.HandleFunc("/simple/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		switch r.URL.Path {
		case "/simple/":
			fmt.Fprint(w, `<!DOCTYPE html><html><body><a href="/simple/palisade-hello/">palisade-hello</a></body></html>`)
		case "/simple/palisade-hello/":
			fmt.Fprintf(w, `<!DOCTYPE html><html><body><a href="/files/%s#sha256=%x">%s</a></body></html>`, wheelName, sum, wheelName)
		default:
			http.NotFound(w, r)
		}
	})
	mux.HandleFunc("/files/"+wheelName, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(whl)
	})
	logged := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Printf("package index request: host=%s path=%s tls=%t from=%s\n", r.Host, r.URL.Path, r.TLS != nil, r.RemoteAddr)
		mux.ServeHTTP(w, r)
	})
	plain, err := net.Listen("tcp", net.JoinHostPort(addr, "80"))
	if err != nil {
		return err
	}
	secure, err := net.Listen("tcp", net.JoinHostPort(addr, "443"))
	if err != nil {
		return err
	}
	go func() { errs <- http.Serve(plain, logged) }()
	go func() {
		srv := &http.Server{Handler: logged, ReadHeaderTimeout: 10 * time.Second}
		errs <- srv.ServeTLS(secure, certFile, keyFile)
	}()
	return nil
}

// demo is the demo agent: it tries what the image's /etc/palisade-demo/checks lists (or the
// checks given), and prints in words what the sandbox allowed and what it stopped.
func demo(args []string) int {
	checks := []string{}
	for _, a := range args[1:] {
		if strings.Contains(a, ":") || a == "id" || a == "kernel" || a == "token" {
			checks = append(checks, a)
		}
	}
	if len(checks) == 0 {
		if data, err := os.ReadFile("/etc/palisade-demo/checks"); err == nil {
			for _, l := range strings.Split(string(data), "\n") {
				if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
					checks = append(checks, l)
				}
			}
		}
	}
	fmt.Printf("demo agent %q started with %q\n", filepath.Base(args[0]), args[1:])
	for _, c := range checks {
		r := run(c)
		if strings.HasPrefix(c, "isolated:") {
			// Not something the agent tried: the wait for the network plugin (see README).
			fmt.Printf("%-8s %-40s -> %-10s %s\n", "waited", "for the NetworkPolicy to be enforced", r.Result, r.Detail)
			continue
		}
		verdict := "allowed"
		switch r.Result {
		case "refused", "timeout", "unreachable", "denied", "readonly", "absent", "eperm", "nxdomain", "error":
			verdict = "stopped"
		}
		detail := r.Detail
		if len(detail) > 80 {
			detail = detail[:80] + "…"
		}
		fmt.Printf("%-8s %-40s -> %-10s %s\n", verdict, c, r.Result, detail)
	}
	fmt.Println("demo agent done; waiting to be stopped")
	pause()
	return 0
}

func forward(args []string) int {
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: probe forward LISTEN_ADDR:PORT TARGET_ADDR:PORT")
		return 2
	}
	l, err := net.Listen("tcp", args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, "probe forward:", err)
		return 1
	}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		os.Exit(0)
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "probe forward:", err)
			return 1
		}
		go func() {
			defer c.Close()
			t, err := net.DialTimeout("tcp", args[1], 5*time.Second)
			if err != nil {
				return
			}
			defer t.Close()
			done := make(chan struct{}, 2)
			go func() { _, _ = io.Copy(t, c); done <- struct{}{} }()
			go func() { _, _ = io.Copy(c, t); done <- struct{}{} }()
			<-done
		}()
	}
}
