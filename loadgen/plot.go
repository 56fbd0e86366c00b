package loadgen

import (
	"errors"
	"fmt"
	"image/color"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// ErrPlotFormat means a plot path whose extension is neither .png nor .svg.
var ErrPlotFormat = errors.New("loadgen: plot file must end in .png or .svg")

var classColors = [numClasses]color.RGBA{
	KernelHit: {R: 0x1b, G: 0x9e, B: 0x77, A: 0xff},
	UserHit:   {R: 0xd9, G: 0x5f, B: 0x02, A: 0xff},
	UserMiss:  {R: 0x75, G: 0x70, B: 0xb3, A: 0xff},
	Set:       {R: 0xe7, G: 0x29, B: 0x8a, A: 0xff},
}

// WritePlot draws the latency CDF of every class with answers, latency on a logarithmic axis,
// as PNG or SVG according to path's extension.
func (r *Report) WritePlot(path string) error {
	ext := strings.ToLower(filepath.Ext(path))
	if ext != ".png" && ext != ".svg" {
		return fmt.Errorf("%w: %q", ErrPlotFormat, path)
	}
	p := plot.New()
	p.Title.Text = "Latency CDF from intended send time"
	p.X.Label.Text = "latency (µs)"
	p.Y.Label.Text = "fraction of requests"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min, p.Y.Max = 0, 1
	p.Legend.Top = false
	p.Legend.Left = false
	drawn := 0
	for _, c := range Classes {
		pts := cdfPoints(r, c)
		if len(pts) == 0 {
			continue
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return fmt.Errorf("plot %s: %w", c, err)
		}
		l.Color = classColors[c]
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("%s (%d)", c, r.hists[c].TotalCount()), l)
		drawn++
	}
	if drawn == 0 {
		// An empty log axis cannot be drawn; show an empty frame over a nominal range.
		p.X.Min, p.X.Max = 1, 1000
		p.Title.Text += " (no answers)"
	}
	p.Add(plotter.NewGrid())
	if err := p.Save(8*vg.Inch, 5*vg.Inch, path); err != nil {
		return fmt.Errorf("write plot %s: %w", path, err)
	}
	return nil
}

// cdfPoints turns class c's histogram into CDF points (latency in µs, cumulative fraction).
func cdfPoints(r *Report, c Class) plotter.XYs {
	h := r.hists[c]
	total := h.TotalCount()
	if total == 0 {
		return nil
	}
	var pts plotter.XYs
	var cum int64
	for _, b := range h.Distribution() {
		if b.Count == 0 {
			continue
		}
		if len(pts) == 0 {
			pts = append(pts, plotter.XY{X: max(float64(b.From)/1e3, 0.1), Y: 0})
		}
		cum += b.Count
		pts = append(pts, plotter.XY{X: max(float64(b.To)/1e3, 0.1), Y: float64(cum) / float64(total)})
	}
	return pts
}
