// Package app is the uppercase service of the lab: the server that
// uppercases what clients send and the interactive client. Both are written
// against net.Listener and net.Conn, so they run unchanged on the kernel's
// TCP and on our user-space stack.
//
// The service is echo, below: read, uppercase, write back. What keeps
// thousands of idle connections cheap (a small buffer, parking without a
// goroutine) and answers a short request where it arrived (on our stack,
// on the goroutine that read it from the TUN) is conn's business, in
// conn.go; accepting and shutting down are Server's, in server.go.
package app

import "encoding/binary"

// echo is the service, for one connection: read what the client sent,
// uppercase it, write it back, until the client closes (or IdleClose or
// Shutdown ends it).
func (s *Server) echo(c *conn) {
	s.echoFrom(c, nil)
}

// echoFrom is echo after writing pending, the rest of a reply.
func (s *Server) echoFrom(c *conn, pending []byte) {
	if len(pending) > 0 {
		if _, err := c.Write(pending); err != nil {
			s.finish(c)
			return
		}
	}
	for {
		buf := c.Buffer()
		n, err := c.Read(buf)
		if n > 0 {
			Upper(buf[:n])
			if _, err := c.Write(buf[:n]); err != nil {
				break
			}
		}
		if err == errResting {
			return // c went quiet and rests; echo runs again when data comes
		}
		if err != nil {
			break
		}
	}
	s.finish(c)
}

// Upper uppercases the ASCII letters a-z of b in place and leaves every other
// byte (digits, punctuation, UTF-8, binary, NUL) as it is. The length never
// changes, and since each byte is judged on its own, how the stream is
// chunked never matters.
//
// It works eight bytes at a time (the server spends its CPU here at bulk
// speed): for each byte with its top bit clear, adding 0x80-'a' sets the top
// bit exactly when the byte is >= 'a', adding 0x80-'z'-1 exactly when it is
// > 'z'; no addition carries into the next byte. The bytes in range get
// 0x20 cleared, which is what uppercasing an ASCII letter is. Every word is
// written back, letters or not: on mixed bytes (the bench's pseudo-random
// payload) whether a word holds a letter is close to a coin toss, and a
// branch around the store cost a misprediction every other word, 4x the
// time of the loop without it (BenchmarkUpperRandom).
func Upper(b []byte) {
	const (
		ones = 0x0101010101010101
		high = 0x8080808080808080
	)
	i := 0
	for ; i+8 <= len(b); i += 8 {
		x := binary.LittleEndian.Uint64(b[i:])
		h := x &^ high
		ge := h + (0x80-'a')*ones
		gt := h + (0x80-'z'-1)*ones
		mask := ge &^ gt &^ x & high
		binary.LittleEndian.PutUint64(b[i:], x^(mask>>2))
	}
	for ; i < len(b); i++ {
		if c := b[i]; 'a' <= c && c <= 'z' {
			b[i] = c - ('a' - 'A')
		}
	}
}
