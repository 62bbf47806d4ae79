package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/internal/status"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/topology"
)

// StatusGroup is one replication group on the status screen: who is primary now, its
// standbys and how far behind they are, the epoch, and the last switchover or failover.
type StatusGroup struct {
	Name     string   `json:"name"`
	Kind     string   `json:"kind"`
	Primary  string   `json:"primary"`
	Standbys []string `json:"standbys"`
	Epoch    int64    `json:"epoch"`
	// Timeline is the Postgres primary's timeline (0 for Redis or when it did not answer).
	Timeline int64 `json:"timeline,omitempty"`
	// LagBytes and LagSeconds are the largest of the standbys'.
	LagBytes   int64   `json:"lag_bytes"`
	LagSeconds float64 `json:"lag_seconds"`
	// LastChange is the group's newest switchover or failover, with its measured write block.
	LastChange *topology.Event `json:"last_change,omitempty"`
}

// statusGroups builds the groups section from the topology, the hosts' replication lines and
// the control database's history.
func statusGroups(ctx context.Context, st *stack.Stack, topo topology.Topology, rep *status.Report) ([]StatusGroup, error) {
	var events map[string]topology.Event
	var evErr error
	if topo.Source == topology.SourceControl {
		dsn, err := topology.ControlDSN(topo, "postgres", st.Shards.ControlDatabase)
		if err == nil {
			err = withControl(ctx, dsn, func(db topology.DB) error {
				events, err = topology.LastEvents(ctx, db, "")
				return err
			})
		}
		evErr = err
	}
	byHost := map[string]status.Host{}
	for _, h := range rep.Hosts {
		byHost[h.Name] = h
	}
	var out []StatusGroup
	for _, g := range topo.Groups {
		sg := StatusGroup{Name: g.Name, Kind: g.Kind, Primary: g.Primary, Epoch: g.Epoch}
		for _, m := range g.Standbys() {
			sg.Standbys = append(sg.Standbys, m.Host)
			if r := byHost[m.Host].Replication; r != nil {
				sg.LagBytes, sg.LagSeconds = max(sg.LagBytes, r.LagBytes), max(sg.LagSeconds, r.LagSeconds)
			}
		}
		if e, ok := events[g.Name]; ok {
			sg.LastChange = &e
		}
		if g.Kind == topology.KindPostgres {
			if p, err := g.PrimaryMember(); err == nil {
				sg.Timeline = primaryTimeline(ctx, p.DSN("postgres", "postgres"))
			}
		}
		out = append(out, sg)
	}
	return out, evErr
}

// primaryTimeline reads a server's timeline; 0 when it does not answer within a few seconds.
func primaryTimeline(ctx context.Context, dsn string) int64 {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0
	}
	defer c.Close(context.WithoutCancel(ctx))
	var tl int64
	if c.QueryRow(ctx, "SELECT timeline_id FROM pg_control_checkpoint()").Scan(&tl) != nil {
		return 0
	}
	return tl
}

func renderGroups(w io.Writer, groups []StatusGroup, groupErr string) {
	if len(groups) == 0 && groupErr == "" {
		return
	}
	fmt.Fprintln(w, "\nReplication groups:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GROUP\tPRIMARY\tSTANDBYS\tTIMELINE\tBEHIND\tLAG\tEPOCH\tLAST CHANGE")
	for _, g := range groups {
		tl := "-"
		if g.Timeline > 0 {
			tl = fmt.Sprint(g.Timeline)
		}
		last := "none"
		if e := g.LastChange; e != nil {
			last = fmt.Sprintf("%s %s->%s %s, write block %s", e.Op, e.OldPrimary, e.NewPrimary,
				e.At.Format(time.RFC3339), e.WriteBlock.Round(time.Millisecond))
			if e.Op == "failover" {
				if e.LossBytes >= 0 {
					last += fmt.Sprintf(", loss window %d bytes", e.LossBytes)
				} else {
					last += ", loss window unknown"
				}
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d bytes\t%.1fs\t%d\t%s\n", g.Name, g.Primary, strings.Join(g.Standbys, ","),
			tl, g.LagBytes, g.LagSeconds, g.Epoch, last)
	}
	tw.Flush()
	if groupErr != "" {
		fmt.Fprintf(w, "  history unavailable: %s\n", groupErr)
	}
}
