// tiny: the one static binary the local real nodes' images are made of (no image can be
// pulled on these machines). Modes, by first argument:
//
//	tiny pause        sleep until SIGTERM/SIGINT, then exit 0 (the pod sandbox's image)
//	tiny env          print the environment (sorted), then sleep like pause
//	tiny http [ADDR]  serve HTTP on ADDR (default :8080): GET / answers the pod's
//	                  hostname and KAITO_EMULATED_GPU, until SIGTERM/SIGINT
package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

func waitForSignal() os.Signal {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	return <-ch
}

func main() {
	mode := "pause"
	if len(os.Args) > 1 {
		mode = os.Args[1]
	}
	switch mode {
	case "pause":
		waitForSignal()
	case "env":
		env := os.Environ()
		sort.Strings(env)
		for _, kv := range env {
			fmt.Println(kv)
		}
		waitForSignal()
	case "http":
		addr := ":8080"
		if len(os.Args) > 2 {
			addr = os.Args[2]
		}
		host, _ := os.Hostname()
		mux := http.NewServeMux()
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from %s (KAITO_EMULATED_GPU=%s)\n", host, os.Getenv("KAITO_EMULATED_GPU"))
		})
		srv := &http.Server{Addr: addr, Handler: mux}
		go func() {
			waitForSignal()
			srv.Shutdown(context.Background())
		}()
		fmt.Printf("listening on %s\n", addr)
		if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	default:
		fmt.Fprintf(os.Stderr, "tiny: unknown mode %q (pause, env, http)\n", mode)
		os.Exit(2)
	}
}
