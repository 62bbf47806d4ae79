package awsfault

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
)

// The rewrites below work on EC2's XML as bytes, minimally: a reply is re-encoded nowhere, so
// everything the injector does not touch reaches the client exactly as the service sent it.

// eachItem calls f on every top-level <item> of every <set>...</set> of body and puts back what
// f returns (nil removes the item).
func eachItem(body []byte, set string, f func(item []byte) []byte) []byte {
	open, end := []byte("<"+set+">"), []byte("</"+set+">")
	var out bytes.Buffer
	rest := body
	for {
		i := bytes.Index(rest, open)
		if i < 0 {
			out.Write(rest)
			return out.Bytes()
		}
		i += len(open)
		j := bytes.Index(rest[i:], end)
		if j < 0 {
			out.Write(rest)
			return out.Bytes()
		}
		out.Write(rest[:i])
		out.Write(eachTopItem(rest[i:i+j], f))
		rest = rest[i+j:]
	}
}

// eachTopItem rewrites the depth-1 <item> elements of the inside of one set.
func eachTopItem(inner []byte, f func([]byte) []byte) []byte {
	var out bytes.Buffer
	depth, start, last := 0, -1, 0
	for i := 0; i < len(inner); {
		switch {
		case bytes.HasPrefix(inner[i:], []byte("<item>")):
			if depth == 0 {
				start = i
			}
			depth++
			i += len("<item>")
		case bytes.HasPrefix(inner[i:], []byte("</item>")):
			depth--
			i += len("</item>")
			if depth == 0 && start >= 0 {
				out.Write(inner[last:start])
				out.Write(f(inner[start:i]))
				last, start = i, -1
			}
		default:
			i++
		}
	}
	out.Write(inner[last:])
	return out.Bytes()
}

// firstValue is the text of the first <tag>...</tag> in b, or "".
func firstValue(b []byte, tag string) string {
	v := allValues(b, tag)
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// allValues is the text of every <tag>...</tag> in b, in order.
func allValues(b []byte, tag string) []string {
	open, end := []byte("<"+tag+">"), []byte("</"+tag+">")
	var out []string
	for {
		i := bytes.Index(b, open)
		if i < 0 {
			return out
		}
		b = b[i+len(open):]
		j := bytes.Index(b, end)
		if j < 0 {
			return out
		}
		out = append(out, string(b[:j]))
		b = b[j+len(end):]
	}
}

// replaceFirst replaces the first old in b by new.
func replaceFirst(b []byte, old, new string) []byte {
	return bytes.Replace(b, []byte(old), []byte(new), 1)
}

// replaceElement replaces the first <tag>...</tag> (or <tag/>) of b by repl; when b has none,
// repl goes before the first <before>.
func replaceElement(b []byte, tag, repl, before string) []byte {
	open, end := []byte("<"+tag+">"), []byte("</"+tag+">")
	if i := bytes.Index(b, open); i >= 0 {
		if j := bytes.Index(b[i:], end); j >= 0 {
			return concat(b[:i], []byte(repl), b[i+j+len(end):])
		}
	}
	if i := bytes.Index(b, []byte("<"+tag+"/>")); i >= 0 {
		return concat(b[:i], []byte(repl), b[i+len(tag)+3:])
	}
	if i := bytes.Index(b, []byte("<"+before+">")); i >= 0 {
		return concat(b[:i], []byte(repl), b[i:])
	}
	return b
}

func concat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// setInstanceState sets an instance item's state.
func setInstanceState(item []byte, code int, name string) []byte {
	return replaceElement(item, "instanceState",
		fmt.Sprintf("<instanceState><code>%d</code><name>%s</name></instanceState>", code, name), "instanceId")
}

// setStateReason sets an instance item's state reason.
func setStateReason(item []byte, code, msg string) []byte {
	return replaceElement(item, "stateReason",
		"<stateReason><code>"+code+"</code><message>"+xmlEscape(msg)+"</message></stateReason>", "instanceId")
}

// setAttachmentStatus sets the status of a volume item's attachments.
func setAttachmentStatus(item []byte, status string) []byte {
	i := bytes.Index(item, []byte("<attachmentSet>"))
	if i < 0 {
		return item
	}
	j := bytes.Index(item[i:], []byte("</attachmentSet>"))
	if j < 0 {
		return item
	}
	set := bytes.ReplaceAll(item[i:i+j], []byte("<status>attached</status>"), []byte("<status>"+status+"</status>"))
	return concat(item[:i], set, item[i+j:])
}

func xmlEscapeTo(w io.Writer, s string) error { return xml.EscapeText(w, []byte(s)) }
