// Package app is the uppercase service of the lab: the server that
// uppercases what clients send and the interactive client. Both are written
// against net.Listener and net.Conn, so they run unchanged on the kernel's
// TCP and on our user-space stack.
package app

// Upper uppercases the ASCII letters a-z of b in place and leaves every other
// byte (digits, punctuation, UTF-8, binary, NUL) as it is. The length never
// changes, and since it works byte by byte, how the stream is chunked never
// matters.
func Upper(b []byte) {
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - ('a' - 'A')
		}
	}
}
