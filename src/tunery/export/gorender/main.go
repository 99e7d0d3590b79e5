// gorender renders Ollama chat templates the way Ollama does, so tunery can check a template
// before writing it into a Modelfile.
//
// stdin:  {"template": "...", "cases": [{"Messages": [{"Role": "...", "Content": "..."}], "System": "..."}]}
// stdout: a JSON list with one rendering per case.
//
// As in Ollama's template package: text/template with missingkey=zero and a `json` function,
// executed with the values Ollama gives a chat request (System, Messages, Tools, Response, Think).
// Exit 3: the template does not parse; 4: a case does not execute; the error is on stderr.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

// The fields of Ollama's api.Message that templates read.
type Message struct {
	Role      string
	Content   string
	Thinking  string
	Images    []string
	ToolCalls []any
	ToolName  string
}

type Case struct {
	Messages []Message
	System   string
}

type Input struct {
	Template string
	Cases    []Case
}

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
}

func fail(code int, format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(code)
}

func main() {
	var in Input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fail(2, "reading the input: %v", err)
	}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(in.Template)
	if err != nil {
		fail(3, "%v", err)
	}
	out := make([]string, 0, len(in.Cases))
	for i, c := range in.Cases {
		messages := make([]*Message, len(c.Messages)) // Ollama hands the template pointers
		for j := range c.Messages {
			messages[j] = &c.Messages[j]
		}
		var b strings.Builder
		err := tmpl.Execute(&b, map[string]any{
			"System":     c.System,
			"Messages":   messages,
			"Tools":      []any(nil),
			"Response":   "",
			"Think":      false,
			"IsThinkSet": false,
		})
		if err != nil {
			fail(4, "case %d: %v", i, err)
		}
		out = append(out, b.String())
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail(2, "writing the output: %v", err)
	}
}
