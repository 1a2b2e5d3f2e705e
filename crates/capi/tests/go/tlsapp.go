// Three go-dqlite app nodes with TLS in one process, over whatever
// libdqlite.so.0 the loader finds; crates/capi/tests/go_node.rs builds it
// with cgo against Debian's go-dqlite sources and runs it on dqlite-rs.
//
// With TLS, go-dqlite's app binds each node to an abstract Unix socket
// (@dqlite-<id>), terminates TLS on the node's TCP address and proxies to
// that socket; peer connections go through its connect function, which
// dials TLS and hands the node one end of a socket pair.
//
// Usage: tlsapp ROOT ADDRESS1 ADDRESS2 ADDRESS3. Prints "ok" last.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/canonical/go-dqlite/app"
	"github.com/canonical/go-dqlite/client"
)

func fail(what string, err error) {
	fmt.Printf("%s: %v\n", what, err)
	os.Exit(1)
}

// A self-signed certificate every node uses, as go-dqlite's docs suggest.
func clusterCert() (tls.Certificate, *x509.CertPool) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		fail("key", err)
	}
	template := x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "dqlite"},
		DNSNames:              []string{"dqlite"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, &template, &template, &key.PublicKey, key)
	if err != nil {
		fail("certificate", err)
	}
	parsed, err := x509.ParseCertificate(der)
	if err != nil {
		fail("parse certificate", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(parsed)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: parsed}, pool
}

func main() {
	root, addresses := os.Args[1], os.Args[2:5]
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cert, pool := clusterCert()
	listen, dial := app.SimpleTLSConfig(cert, pool)
	// Debian's Go 1.19.8 has golang/go#59424: after a HelloRetryRequest a
	// TLS 1.3 client computes its PSK binder wrongly, and SimpleTLSConfig
	// causes one on every handshake (server curves P-521, P-384, P-256; the
	// client's first key share is X25519). So every resumed handshake fails
	// ("invalid PSK binder") and drops the ticket, and the next succeeds and
	// caches a new one: every other dial through the session cache the three
	// apps share fails. go-dqlite's leader search could lock into dialling
	// the leader always right after a success, so no client reached it and
	// a node was never promoted (with Canonical's libdqlite too). The same
	// curve order on both sides needs no retry, and resumption works.
	dial.CurvePreferences = listen.CurvePreferences
	tlsOption := app.WithTLS(listen, dial)

	apps := []*app.App{}
	for i, address := range addresses {
		options := []app.Option{app.WithAddress(address), tlsOption,
			app.WithRolesAdjustmentFrequency(time.Second)}
		if i > 0 {
			options = append(options, app.WithCluster([]string{addresses[0]}))
		}
		dir := filepath.Join(root, fmt.Sprint(i))
		if err := os.MkdirAll(dir, 0755); err != nil {
			fail("mkdir", err)
		}
		a, err := app.New(dir, options...)
		if err != nil {
			fail("app", err)
		}
		if err := a.Ready(ctx); err != nil {
			fail("ready", err)
		}
		fmt.Println(time.Now().Format(time.StampMilli), "ready", i)
		apps = append(apps, a)
	}

	// go-dqlite's own role management makes every node a voter.
	voters := 0
	for voters < 3 {
		if ctx.Err() != nil {
			fail("3 voters", ctx.Err())
		}
		time.Sleep(200 * time.Millisecond)
		cli, err := apps[0].Leader(ctx)
		if err != nil {
			continue
		}
		nodes, err := cli.Cluster(ctx)
		cli.Close()
		if err != nil {
			continue
		}
		voters = 0
		for _, n := range nodes {
			if n.Role == client.Voter {
				voters++
			}
		}
	}
	fmt.Println(time.Now().Format(time.StampMilli), "voters")
	fmt.Println("voters:", voters)

	db, err := apps[1].Open(ctx, "demo")
	if err != nil {
		fail("open", err)
	}
	if _, err := db.ExecContext(ctx, "CREATE TABLE t (x TEXT)"); err != nil {
		fail("create", err)
	}
	if _, err := db.ExecContext(ctx, "INSERT INTO t VALUES ('over TLS')"); err != nil {
		fail("insert", err)
	}
	db.Close()
	db, err = apps[2].Open(ctx, "demo")
	if err != nil {
		fail("open", err)
	}
	var x string
	if err := db.QueryRowContext(ctx, "SELECT x FROM t").Scan(&x); err != nil {
		fail("select", err)
	}
	db.Close()
	fmt.Println("read:", x)
	fmt.Println(time.Now().Format(time.StampMilli), "read")

	for i := len(apps) - 1; i >= 0; i-- {
		// The last one has no quorum left to hand over to.
		if i > 0 {
			apps[i].Handover(ctx)
		}
		if err := apps[i].Close(); err != nil {
			fail("close", err)
		}
		fmt.Println(time.Now().Format(time.StampMilli), "closed", i)
	}
	fmt.Println("ok")
}
