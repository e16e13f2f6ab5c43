// Command vcsim serves govmomi's vCenter simulator with a configurable inventory, for
// hvmesh's VMware tests.
//
// It builds the inventory (datacenters, clusters of hosts, standalone hosts, datastores,
// distributed port groups, resource pools, VMs), listens on the given address (default
// 127.0.0.1 with a free port), accepts only the given credentials, serves HTTPS with a
// self-signed certificate (generated, or loaded with -tls-cert/-tls-key), prints what a
// client needs on stdout, one KEY=value per line, and serves until SIGTERM or SIGINT
// (or the end of stdin with -exit-on-eof). The last line printed is VCSIM_URL: once it
// is out, the simulator answers. Datastores are directories under $TMPDIR.
//
//	VCSIM_CERT=/tmp/.../vcsim-cert.pem       the server certificate (PEM), its own CA
//	VCSIM_KEY=/tmp/.../vcsim-key.pem         its private key (to restart with the same one)
//	VCSIM_THUMBPRINT=AB:CD:...               SHA-1 of the certificate, as vSphere shows it
//	VCSIM_URL=https://user:pass@127.0.0.1:PORT/sdk
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
)

type options struct {
	listen      string
	username    string
	password    string
	tls         bool
	certFile    string
	keyFile     string
	certDir     string
	exitOnEOF   bool
	trace       bool
	delay       int
	methodDelay string
	model       *simulator.Model
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "vcsim: "+format+"\n", args...)
	os.Exit(2)
}

func parseFlags() options {
	m := simulator.VPX()
	o := options{model: m}
	flag.StringVar(&o.listen, "l", "127.0.0.1:0", "listen address, host:port (port 0: a free port)")
	flag.StringVar(&o.username, "username", "user", "the only user name accepted by Login")
	flag.StringVar(&o.password, "password", "pass", "the only password accepted by Login")
	flag.BoolVar(&o.tls, "tls", true, "serve HTTPS (false: plain HTTP)")
	flag.StringVar(&o.certFile, "tls-cert", "", "PEM certificate to serve (default: a new self-signed one)")
	flag.StringVar(&o.keyFile, "tls-key", "", "PEM private key of -tls-cert")
	flag.StringVar(&o.certDir, "cert-dir", "", "where a generated certificate and key are written (default: $TMPDIR)")
	flag.BoolVar(&o.exitOnEOF, "exit-on-eof", false, "exit when stdin reaches its end (the parent went away)")
	flag.BoolVar(&o.trace, "trace", false, "trace SOAP requests and responses on stderr")
	flag.IntVar(&o.delay, "delay", 0, "milliseconds added to every SOAP call")
	flag.StringVar(&o.methodDelay, "method-delay", "", "per-method delays, e.g. PowerOnVM_Task:500,RelocateVM_Task:1000 (milliseconds)")
	flag.IntVar(&m.Datacenter, "dc", 1, "datacenters (DC0, DC1...)")
	flag.IntVar(&m.Cluster, "cluster", 2, "clusters per datacenter (DC0_C0, DC0_C1...)")
	flag.IntVar(&m.ClusterHost, "host", 2, "hosts per cluster (DC0_C0_H0...)")
	flag.IntVar(&m.Host, "standalone-host", 1, "standalone hosts per datacenter (DC0_H0...)")
	flag.IntVar(&m.Machine, "vm", 0, "VMs per cluster, in its root pool (DC0_C0_RP0_VM0...), and per standalone host (DC0_H0_VM0...)")
	flag.IntVar(&m.Datastore, "ds", 2, "datastores, each mounted on every host (LocalDS_0...)")
	flag.IntVar(&m.Portgroup, "pg", 2, "distributed port groups per datacenter (DC0_DVPG0...), on the switch DVS0")
	flag.IntVar(&m.Pool, "pool", 1, "child resource pools per cluster (DC0_C0_RP1...), besides the root pool Resources")
	flag.IntVar(&m.Folder, "folder", 0, "datacenters placed, with their host/vm/network/datastore folders, in a folder (F0...)")
	flag.BoolVar(&m.Autostart, "autostart", true, "power on the VMs the model creates")
	flag.Parse()
	if flag.NArg() != 0 {
		fail("unexpected arguments: %q", flag.Args())
	}
	return o
}

func (o *options) validate() {
	counts := map[string]int{
		"-dc": o.model.Datacenter, "-cluster": o.model.Cluster, "-host": o.model.ClusterHost,
		"-standalone-host": o.model.Host, "-vm": o.model.Machine, "-ds": o.model.Datastore,
		"-pg": o.model.Portgroup, "-pool": o.model.Pool, "-folder": o.model.Folder,
		"-delay": o.delay,
	}
	for name, n := range counts {
		if n < 0 || n > 1000 {
			fail("%s must be between 0 and 1000, got %d", name, n)
		}
	}
	if o.model.Datacenter < 1 {
		fail("-dc must be at least 1")
	}
	if o.model.Datastore < 1 {
		fail("-ds must be at least 1 (the model's VMs and disks live on LocalDS_0)")
	}
	if o.model.Cluster*o.model.ClusterHost+o.model.Host < 1 {
		fail("the model has no host: give -cluster and -host, or -standalone-host")
	}
	if o.username == "" || o.password == "" {
		fail("-username and -password must not be empty")
	}
	if (o.certFile == "") != (o.keyFile == "") {
		fail("-tls-cert and -tls-key go together")
	}
	if o.certFile != "" && !o.tls {
		fail("-tls-cert needs -tls=true")
	}
	if _, _, err := net.SplitHostPort(o.listen); err != nil {
		fail("-l %q is not host:port: %v", o.listen, err)
	}
	delays, err := parseMethodDelay(o.methodDelay)
	if err != nil {
		fail("-method-delay: %v", err)
	}
	o.model.DelayConfig = simulator.DelayConfig{Delay: o.delay, MethodDelay: delays}
}

func parseMethodDelay(spec string) (map[string]int, error) {
	delays := map[string]int{}
	if spec == "" {
		return delays, nil
	}
	for _, item := range strings.Split(spec, ",") {
		name, ms, ok := strings.Cut(item, ":")
		n, err := strconv.Atoi(ms)
		if !ok || name == "" || err != nil || n < 0 {
			return nil, fmt.Errorf("%q is not Method:milliseconds", item)
		}
		delays[name] = n
	}
	return delays, nil
}

// selfSigned makes an ECDSA certificate for the listen host, 127.0.0.1, ::1 and
// localhost, valid for a year, that is its own CA (so a client can trust exactly it),
// and writes it and its key as PEM files in dir.
func selfSigned(listenHost, dir string) (tls.Certificate, string, string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, "", "", err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, "", "", err
	}
	tmpl := x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "vcsim", Organization: []string{"hvmesh tests"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	if ip := net.ParseIP(listenHost); ip != nil && !ip.IsUnspecified() && !ip.IsLoopback() {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
	} else if ip == nil && listenHost != "" && listenHost != "localhost" {
		tmpl.DNSNames = append(tmpl.DNSNames, listenHost)
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, "", "", err
	}
	keyDer, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tls.Certificate{}, "", "", err
	}
	certPem := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPem := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDer})
	certFile := filepath.Join(dir, "vcsim-cert.pem")
	keyFile := filepath.Join(dir, "vcsim-key.pem")
	if err := os.WriteFile(certFile, certPem, 0o644); err != nil {
		return tls.Certificate{}, "", "", err
	}
	if err := os.WriteFile(keyFile, keyPem, 0o600); err != nil {
		return tls.Certificate{}, "", "", err
	}
	cert, err := tls.X509KeyPair(certPem, keyPem)
	return cert, certFile, keyFile, err
}

func loadCertificate(o *options, listenHost string) (tls.Certificate, string, string) {
	if o.certFile != "" {
		cert, err := tls.LoadX509KeyPair(o.certFile, o.keyFile)
		if err != nil {
			fail("cannot load -tls-cert %s / -tls-key %s: %v", o.certFile, o.keyFile, err)
		}
		return cert, o.certFile, o.keyFile
	}
	dir := o.certDir
	if dir == "" {
		dir = os.TempDir()
	}
	cert, certFile, keyFile, err := selfSigned(listenHost, dir)
	if err != nil {
		fail("cannot write a self-signed certificate in %s: %v", dir, err)
	}
	return cert, certFile, keyFile
}

func thumbprint(der []byte) string {
	sum := sha1.Sum(der)
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(parts, ":")
}

// serve starts the simulator's HTTP server; a listen failure (the library panics)
// becomes an error.
func serve(m *simulator.Model) (s *simulator.Server, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	return m.Service.NewServer(), nil
}

func main() {
	o := parseFlags()
	o.validate()
	listenHost, _, _ := net.SplitHostPort(o.listen)
	simulator.Trace = o.trace

	m := o.model
	if err := m.Create(); err != nil {
		m.Remove()
		fail("cannot create the inventory: %v", err)
	}
	defer m.Remove()

	m.Service.Listen = &url.URL{Host: o.listen, User: url.UserPassword(o.username, o.password)}
	lines := []string{}
	if o.tls {
		cert, certFile, keyFile := loadCertificate(&o, listenHost)
		m.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		lines = append(lines, "VCSIM_CERT="+certFile, "VCSIM_KEY="+keyFile,
			"VCSIM_THUMBPRINT="+thumbprint(cert.Certificate[0]))
	}
	s, err := serve(m)
	if err != nil {
		m.Remove()
		fail("cannot listen on %s: %v", o.listen, err)
	}
	u := *s.URL
	u.User = url.UserPassword(o.username, o.password)
	lines = append(lines, "VCSIM_URL="+u.String())
	fmt.Println(strings.Join(lines, "\n"))

	done := make(chan string, 2)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() { done <- (<-sig).String() }()
	if o.exitOnEOF {
		go func() {
			_, err := io.Copy(io.Discard, os.Stdin)
			if err == nil {
				err = errors.New("end of stdin")
			}
			done <- err.Error()
		}()
	}
	reason := <-done
	fmt.Fprintf(os.Stderr, "vcsim: stopping (%s)\n", reason)

	// Long polls (WaitForUpdatesEx) may hold Close; the process ends anyway.
	closed := make(chan struct{})
	go func() { s.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(3 * time.Second):
	}
}
