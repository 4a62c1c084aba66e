// records is the e2e workload: it writes numbered, checksummed records to a
// file or a block device, fsyncing each one, and reads them back.
//
//	records write -path P -count N [-start S] [-sleep]   write records S..S+N-1
//	records stream -path P [-path2 Q] [-interval 10ms]   write 0,1,2,... until killed (each to P, then to Q); exit 1 on the first error
//	records check -path P -count N                        every record 0..N-1 present and intact
//	records prefix -path P                                prints how many records from 0 on are intact; exit 1 when one is intact past that gap
//	records listen -addr A / records dial -addr A         a TCP listener that answers "floe-e2e <hostname>" / its client
//	records size -path P                                  prints the size in bytes of a file's file system or of a block device
//	records sleep                                         sleeps until SIGTERM
//
// A record is one 4096-byte block at offset index*4096: "floe-record <index>
// <crc32 of the index and payload>\n" then a payload derived from the index.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

const recordSize = 4096

func record(index int) []byte {
	buf := make([]byte, recordSize)
	payload := bytes.Repeat([]byte(fmt.Sprintf("%08x", index*2654435761)), recordSize/8)
	sum := crc32.ChecksumIEEE(append([]byte(fmt.Sprint(index)), payload...))
	header := fmt.Sprintf("floe-record %d %08x\n", index, sum)
	copy(buf, payload)
	copy(buf, header)
	return buf
}

func open(path string, write bool) *os.File {
	flags := os.O_RDONLY
	if write {
		flags = os.O_RDWR | os.O_CREATE
	}
	f, err := os.OpenFile(path, flags, 0o644)
	if err != nil {
		fail("open %s: %v", path, err)
	}
	return f
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "records: "+format+"\n", args...)
	os.Exit(1)
}

func writeOne(f *os.File, i int) {
	if _, err := f.WriteAt(record(i), int64(i)*recordSize); err != nil {
		fail("write record %d: %v", i, err)
	}
	if err := f.Sync(); err != nil {
		fail("fsync record %d: %v", i, err)
	}
}

func intact(f *os.File, i int) bool {
	buf := make([]byte, recordSize)
	if _, err := f.ReadAt(buf, int64(i)*recordSize); err != nil && err != io.EOF {
		return false
	}
	return bytes.Equal(buf, record(i))
}

func sleepForever() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	<-sigs
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: records write|stream|check|prefix|listen|dial|size|sleep [flags]")
	}
	cmd := os.Args[1]
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	path := fs.String("path", "/data/records", "file or block device")
	count := fs.Int("count", 100, "number of records")
	start := fs.Int("start", 0, "first record")
	sleep := fs.Bool("sleep", false, "sleep until SIGTERM afterwards")
	interval := fs.Duration("interval", 10*time.Millisecond, "pause between streamed records")
	addr := fs.String("addr", ":7070", "listen or dial address")
	path2 := fs.String("path2", "", "stream: a second file or device, written after -path")
	_ = fs.Parse(os.Args[2:])

	switch cmd {
	case "write":
		f := open(*path, true)
		for i := *start; i < *start+*count; i++ {
			writeOne(f, i)
		}
		fmt.Printf("wrote %d records from %d to %s\n", *count, *start, *path)
		if *sleep {
			sleepForever()
		}
	case "stream":
		f := open(*path, true)
		var g *os.File
		if *path2 != "" {
			g = open(*path2, true)
		}
		for i := 0; ; i++ {
			writeOne(f, i)
			if g != nil {
				writeOne(g, i)
			}
			if i%100 == 0 {
				fmt.Printf("streamed %d records\n", i+1)
			}
			time.Sleep(*interval)
		}
	case "check":
		f := open(*path, false)
		for i := 0; i < *count; i++ {
			if !intact(f, i) {
				fail("record %d of %d missing or damaged in %s", i, *count, *path)
			}
		}
		fmt.Printf("ok: %d records intact in %s\n", *count, *path)
	case "prefix":
		f := open(*path, false)
		n := 0
		for intact(f, n) {
			n++
		}
		for i := n + 1; i < n+256; i++ {
			if intact(f, i) {
				fail("record %d is intact after the gap at %d in %s", i, n, *path)
			}
		}
		fmt.Println(n)
	case "size":
		f := open(*path, false)
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeDevice != 0 {
			end, err := f.Seek(0, io.SeekEnd)
			if err != nil {
				fail("seek %s: %v", *path, err)
			}
			fmt.Println(end)
			return
		}
		var st syscall.Statfs_t
		if err := syscall.Statfs(*path, &st); err != nil {
			fail("statfs %s: %v", *path, err)
		}
		fmt.Println(st.Blocks * uint64(st.Bsize))
	case "listen":
		l, err := net.Listen("tcp", *addr)
		if err != nil {
			fail("listen %s: %v", *addr, err)
		}
		host, _ := os.Hostname()
		fmt.Printf("listening on %s\n", *addr)
		for {
			c, err := l.Accept()
			if err != nil {
				fail("accept: %v", err)
			}
			fmt.Fprintf(c, "floe-e2e %s\n", host)
			c.Close()
		}
	case "dial":
		c, err := net.DialTimeout("tcp", *addr, 5*time.Second)
		if err != nil {
			fail("dial %s: %v", *addr, err)
		}
		_, _ = io.Copy(os.Stdout, c)
	case "sleep":
		sleepForever()
	default:
		fail("unknown command %q", cmd)
	}
}
