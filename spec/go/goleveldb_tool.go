// goleveldb_tool: opens a LevelDB directory with goleveldb exactly as the Go
// minikeyvalue opens its index (leveldb.OpenFile(dir, nil): default options, flock on
// <dir>/LOCK), so the handover spec sees what the Go original would see.
//
//	goleveldb_tool dump DIR   every record, in key order, one "hex(key) hex(value)" line each
//	goleveldb_tool hold DIR   opens DIR, prints "held", and keeps it open until stdin closes
//
// Built by spec/integration/handover_spec.lua against Debian's golang-go and
// golang-github-syndtr-goleveldb-dev (GO111MODULE=off GOPATH=/usr/share/gocode).
package main

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"io"
	"os"

	"github.com/syndtr/goleveldb/leveldb"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: goleveldb_tool dump|hold DIR")
		os.Exit(2)
	}
	db, err := leveldb.OpenFile(os.Args[2], nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "goleveldb open failed:", err)
		os.Exit(1)
	}
	defer db.Close()
	switch os.Args[1] {
	case "dump":
		out := bufio.NewWriter(os.Stdout)
		it := db.NewIterator(nil, nil)
		for it.Next() {
			fmt.Fprintf(out, "%s %s\n", hex.EncodeToString(it.Key()), hex.EncodeToString(it.Value()))
		}
		it.Release()
		if err := it.Error(); err != nil {
			fmt.Fprintln(os.Stderr, "iteration failed:", err)
			os.Exit(1)
		}
		out.Flush()
	case "hold":
		fmt.Println("held")
		io.Copy(io.Discard, os.Stdin)
	default:
		fmt.Fprintln(os.Stderr, "unknown command", os.Args[1])
		os.Exit(2)
	}
}
