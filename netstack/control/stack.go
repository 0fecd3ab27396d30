package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/tcp-upper/tcp-upper/netstack"
	"github.com/tcp-upper/tcp-upper/netstack/fault"
	"github.com/tcp-upper/tcp-upper/netstack/inspect"
)

// StreamBuffer is how many events a control client may fall behind before
// it loses some (counted and reported to it).
const StreamBuffer = 4096

// ServeStack registers the stack's commands on s:
//
//	hello   who the server is (pid, TUN, address, TIME-WAIT, commands)
//	ss      the socket table, with ss -i's detail
//	stats   the counters (and the process's goroutine count)
//	events  a stream of connection events until the client leaves;
//	        with {"segments":true} also one segment event per TCP segment
//
// hello's PID, Started and Commands are filled in here.
func ServeStack(s *Server, st *netstack.Stack, hello Hello) {
	hello.PID = os.Getpid()
	if hello.Started.IsZero() {
		hello.Started = time.Now()
	}
	s.Handle("hello", func(ctx context.Context, req *Request, send func(*Response) error) error {
		h := hello
		h.Commands = s.Commands()
		return send(&Response{Hello: &h})
	})
	s.Handle("ss", func(ctx context.Context, req *Request, send func(*Response) error) error {
		tr := st.Tracker()
		if tr == nil {
			return errors.New("this server runs without its connection tracker: no socket table")
		}
		socks := []Socket{}
		for _, so := range tr.Sockets() {
			socks = append(socks, FromInspect(so))
		}
		return send(&Response{Sockets: socks})
	})
	s.Handle("stats", func(ctx context.Context, req *Request, send func(*Response) error) error {
		var cs []Counter
		for _, c := range st.Counters() {
			cs = append(cs, Counter{Name: c.Name, Value: c.Value, Help: c.Help})
		}
		// The process's, not the stack's: a leak check watches it.
		cs = append(cs, Counter{Name: "go.goroutines", Value: uint64(runtime.NumGoroutine()), Help: "goroutines in the server process now"})
		return send(&Response{Counters: cs})
	})
	s.Handle("fault", func(ctx context.Context, req *Request, send func(*Response) error) error {
		var a FaultArgs
		if len(req.Args) == 0 || json.Unmarshal(req.Args, &a) != nil {
			return errors.New(`fault wants args {"op":"add","rule":"in syn drop"} or {"op":"list"|"clear"} or {"op":"del","id":N}`)
		}
		f := st.Faults()
		var reply FaultReply
		switch a.Op {
		case "add":
			r, err := fault.Parse(a.Rule)
			if err != nil {
				return err
			}
			reply.ID = f.Add(r)
		case "del":
			if !f.Del(a.ID) {
				return fmt.Errorf("no fault rule #%d (fault list shows the ids)", a.ID)
			}
		case "clear":
		case "list":
		default:
			return fmt.Errorf("unknown fault op %q: want add, list, del or clear", a.Op)
		}
		if a.Op == "clear" {
			f.Clear()
		}
		reply.Rules = f.List()
		reply.Seed = hello.Seed
		b, _ := json.Marshal(reply)
		return send(&Response{Data: b})
	})
	s.Handle("events", func(ctx context.Context, req *Request, send func(*Response) error) error {
		tr := st.Tracker()
		if tr == nil {
			return errors.New("this server runs without its connection tracker: no events")
		}
		var a EventsArgs
		if len(req.Args) > 0 && json.Unmarshal(req.Args, &a) != nil {
			return errors.New(`events takes no args or {"segments":true}`)
		}
		var opts []inspect.SubscribeOption
		if a.Segments {
			opts = append(opts, inspect.WithSegments())
		}
		sub := tr.Subscribe(StreamBuffer, opts...)
		defer sub.Close()
		// An empty first line: subscribed, no later event is missed.
		if err := send(&Response{}); err != nil {
			return err
		}
		var reported uint64
		for {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case ev, ok := <-sub.C():
				if !ok {
					return nil // the stack is closing
				}
				r := &Response{Event: &ev}
				if d := sub.Dropped(); d != reported {
					reported, r.Dropped = d, d
				}
				if err := send(r); err != nil {
					return err
				}
			}
		}
	})
}

// EventsArgs are the events command's arguments.
type EventsArgs struct {
	// Segments adds a segment event (inspect.KindSegment) for every TCP
	// segment of a tracked connection, in order with the stack's events.
	// They share the stream's buffer: a slow reader loses them, counted
	// in Dropped like the others.
	Segments bool `json:"segments,omitempty"`
}

// FaultArgs are the fault command's arguments.
type FaultArgs struct {
	Op   string `json:"op"`             // add, list, del, clear
	Rule string `json:"rule,omitempty"` // for add
	ID   int    `json:"id,omitempty"`   // for del
}

// FaultReply is the fault command's answer: the new rule's id (add) and
// the rules now installed.
type FaultReply struct {
	ID    int               `json:"id,omitempty"`
	Rules []fault.RuleState `json:"rules"`
	Seed  uint64            `json:"seed"`
}

// FromInspect converts a tracker's socket to the protocol's row.
func FromInspect(so inspect.Socket) Socket {
	row := Socket{State: so.State, Local: so.Local, Remote: so.Remote, RecvQ: so.RecvQ, SendQ: so.SendQ}
	if so.TimeWaitLeft > 0 {
		row.TimeWaitLeft = so.TimeWaitLeft
	}
	if so.Info.Known {
		info := so.Info
		row.Info = &info
	}
	return row
}
