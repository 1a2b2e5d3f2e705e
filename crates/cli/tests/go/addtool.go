// Adds a node with go-dqlite's real client, as go-dqlite applications do:
// Client.Add (a spare) then Client.Assign (voter). Usage: addtool LEADER ID ADDRESS.
// Built by crates/cli/tests/roles.rs against Debian's go-dqlite sources.
package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/canonical/go-dqlite/client"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store := client.NewInmemNodeStore()
	store.Set(ctx, []client.NodeInfo{{Address: os.Args[1]}})
	cli, err := client.FindLeader(ctx, store)
	if err != nil {
		fmt.Println("find leader:", err)
		os.Exit(1)
	}
	id, _ := strconv.ParseUint(os.Args[2], 10, 64)
	if err := cli.Add(ctx, client.NodeInfo{ID: id, Address: os.Args[3], Role: client.Spare}); err != nil {
		fmt.Println("add:", err)
		os.Exit(1)
	}
	if err := cli.Assign(ctx, id, client.Voter); err != nil {
		fmt.Println("assign:", err)
		os.Exit(1)
	}
	fmt.Println("ok")
}
