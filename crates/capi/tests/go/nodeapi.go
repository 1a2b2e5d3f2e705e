// Uses go-dqlite's Node API (dqlite.New and its options) over whatever
// libdqlite.so.0 the loader finds; crates/capi/tests/go_node.rs builds it
// with cgo against Debian's go-dqlite sources and runs it on dqlite-rs.
//
// Usage: nodeapi DIR_A ADDRESS_A DIR_B ADDRESS_B
//
// It starts node A (bootstrap) and node B, adds B as a voter, writes rows,
// stops both, recovers A alone with ReconfigureMembershipExt (without it A
// has no quorum), restarts A and reads the rows back. It prints "ok" last.
package main

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	dqlite "github.com/canonical/go-dqlite"
	"github.com/canonical/go-dqlite/client"
	"github.com/canonical/go-dqlite/driver"
)

func fail(what string, err error) {
	fmt.Printf("%s: %v\n", what, err)
	os.Exit(1)
}

// Dials every peer connection of a node, counting them.
func countingDial(count *int64) client.DialFunc {
	return func(ctx context.Context, address string) (net.Conn, error) {
		atomic.AddInt64(count, 1)
		return client.DefaultDialFunc(ctx, address)
	}
}

func newNode(id uint64, address, dir string, dials *int64) *dqlite.Node {
	node, err := dqlite.New(id, address, dir,
		dqlite.WithBindAddress(address),
		dqlite.WithDialFunc(countingDial(dials)),
		dqlite.WithNetworkLatency(5*time.Millisecond),
		dqlite.WithFailureDomain(7),
		dqlite.WithSnapshotParams(dqlite.SnapshotParams{Threshold: 64, Trailing: 128}))
	if err != nil {
		fail("new node", err)
	}
	if err := node.Start(); err != nil {
		fail("start node", err)
	}
	return node
}

func openDB(addresses ...string) *sql.DB {
	store := client.NewInmemNodeStore()
	infos := []client.NodeInfo{}
	for _, a := range addresses {
		infos = append(infos, client.NodeInfo{Address: a})
	}
	store.Set(context.Background(), infos)
	drv, err := driver.New(store, driver.WithContextTimeout(30*time.Second))
	if err != nil {
		fail("driver", err)
	}
	name := fmt.Sprintf("dqlite-%d", time.Now().UnixNano())
	sql.Register(name, drv)
	db, err := sql.Open(name, "test.db")
	if err != nil {
		fail("open", err)
	}
	return db
}

func libraryPath() string {
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		fail("maps", err)
	}
	for _, line := range strings.Split(string(maps), "\n") {
		if i := strings.Index(line, "/"); i >= 0 && strings.Contains(line, "libdqlite") {
			return line[i:]
		}
	}
	return "none"
}

func main() {
	dirA, addrA, dirB, addrB := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	fmt.Println("library:", libraryPath())

	var dialsA, dialsB int64
	a := newNode(dqlite.BootstrapID, addrA, dirA, &dialsA)
	fmt.Println("bind address:", a.BindAddress())
	idB := dqlite.GenerateID(addrB)
	b := newNode(idB, addrB, dirB, &dialsB)

	cli, err := client.New(ctx, addrA)
	if err != nil {
		fail("client", err)
	}
	meta, err := cli.Describe(ctx)
	if err != nil {
		fail("describe", err)
	}
	fmt.Println("failure domain:", meta.FailureDomain)
	if err := cli.Add(ctx, client.NodeInfo{ID: idB, Address: addrB, Role: client.Spare}); err != nil {
		fail("add", err)
	}
	if err := cli.Assign(ctx, idB, client.Voter); err != nil {
		fail("assign", err)
	}
	nodes, err := cli.Cluster(ctx)
	if err != nil {
		fail("cluster", err)
	}
	voters := 0
	for _, n := range nodes {
		if n.Role == client.Voter {
			voters++
		}
	}
	fmt.Println("voters:", voters)
	cli.Close()

	db := openDB(addrA, addrB)
	if _, err := db.Exec("CREATE TABLE t (x INTEGER)"); err != nil {
		fail("create", err)
	}
	for i := 0; i < 3; i++ {
		if _, err := db.Exec("INSERT INTO t VALUES (?)", i); err != nil {
			fail("insert", err)
		}
	}
	db.Close()
	fmt.Println("peer dials:", atomic.LoadInt64(&dialsA)+atomic.LoadInt64(&dialsB))

	if err := b.Close(); err != nil {
		fail("close b", err)
	}
	if err := a.Close(); err != nil {
		fail("close a", err)
	}
	// Two voters, one gone for good: A alone has no quorum...
	a = newNode(dqlite.BootstrapID, addrA, dirA, &dialsA)
	db = openDB(addrA)
	short, cancelShort := context.WithTimeout(ctx, 3*time.Second)
	if _, err := db.ExecContext(short, "INSERT INTO t VALUES (99)"); err == nil {
		fail("write without quorum", fmt.Errorf("succeeded"))
	}
	cancelShort()
	fmt.Println("no quorum before recovery")
	db.Close()
	if err := a.Close(); err != nil {
		fail("close a without quorum", err)
	}
	// ...until it is made the whole cluster.
	recovered := []client.NodeInfo{{ID: dqlite.BootstrapID, Address: addrA, Role: client.Voter}}
	if err := dqlite.ReconfigureMembershipExt(dirA, recovered); err != nil {
		fail("reconfigure", err)
	}
	a = newNode(dqlite.BootstrapID, addrA, dirA, &dialsA)
	db = openDB(addrA)
	var n int
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil {
		fail("count after recovery", err)
	}
	fmt.Println("rows after recovery:", n)
	db.Close()
	if err := a.Close(); err != nil {
		fail("close a after recovery", err)
	}
	fmt.Println("ok")
}
