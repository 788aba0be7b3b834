package ctl

import (
	"context"
	"flag"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"text/template"
)

// The completion scripts are generated from the command table and the
// commands' flag sets, the ones caplancectl parses with, so that a new
// command, flag or argument is completed without anyone remembering to.
// Copies are checked in under contrib/completions; TestCompletionFiles
// fails when they fall behind.

// shells are the shells "completion" writes a script for, in the order of
// its synopsis.
var shells = []string{"bash", "zsh", "fish"}

// flagValues are the values the completions offer for a flag's argument,
// by flag name; a flag not here gets none, or the names of flagNames.
var flagValues = map[string][]string{
	"bus":   {"system", "session"},
	"proto": {"tcp", "udp", "tcp+udp"},
	"hash":  {"5-tuple", "source-ip", "source-ip-port"},
}

// nameList is how the completions get the names of what an argument or a
// flag names, when TAB is pressed: the command whose --json output is an
// array of objects with a "name" each, and what they are.
type nameList struct{ Command, What string }

var (
	backendList = &nameList{Command: "list", What: "backend"}
	serviceList = &nameList{Command: "services", What: "service"}
)

// flagNames are the flags whose argument is an existing name, by flag name.
var flagNames = map[string]*nameList{"service": serviceList}

// completion joins the table in init, at its end: its action reads the
// table, which an entry of the table's literal could not (an
// initialization cycle).
func init() {
	commands = append(commands, command{
		name:     "completion",
		synopsis: strings.Join(shells, "|"),
		summary:  "print the shell completion script",
		setup:    setupCompletion,
		local:    true,
	})
}

func setupCompletion(*flag.FlagSet) func([]string) (action, error) {
	return func(args []string) (action, error) {
		if err := wantArgs(args, "SHELL"); err != nil {
			return nil, err
		}
		shell := args[0]
		if !slices.Contains(shells, shell) {
			return nil, fmt.Errorf("unknown shell %q: want %s", shell, strings.Join(shells, ", "))
		}
		return func(_ context.Context, _ Conn, out io.Writer) error {
			script, err := CompletionScript(shell)
			if err != nil {
				return err
			}
			_, err = io.WriteString(out, script)
			return err
		}, nil
	}
}

// CompletionScript is caplancectl's completion script for shell: bash,
// zsh or fish.
func CompletionScript(shell string) (string, error) {
	if !slices.Contains(shells, shell) {
		return "", fmt.Errorf("no completion script for shell %q", shell)
	}
	var b strings.Builder
	if err := completionTemplates.ExecuteTemplate(&b, shell, completionSpecOf(commands)); err != nil {
		return "", err
	}
	return b.String(), nil
}

// compSpec is what the completions know of caplancectl.
type compSpec struct {
	Global   []compFlag // before the command
	Commands []compCommand
}

type compCommand struct {
	Name, Summary string // an alias is a command of its own here
	Flags         []compFlag
	Args          []compArg // the positional arguments, in order
}

type compFlag struct {
	Name  string
	Usage string    // its usage, one line
	Value string    // the name of its value, lower case; "" for a boolean flag
	Words []string  // the values to offer
	Names *nameList // or the names to offer
}

// compArg is a positional argument, named as in the synopsis.
type compArg struct {
	Name  string
	Names *nameList // existing names to offer
	Words []string  // the words to offer, from a synopsis "a|b|c"
}

// Every command and caplancectl itself take --help; caplancectl's
// --version is added by cli.
var (
	helpFlag    = compFlag{Name: "help", Usage: "print the usage and exit"}
	versionFlag = compFlag{Name: "version", Usage: "print the version and exit"}
)

func completionSpecOf(cmds []command) compSpec {
	spec := compSpec{Global: append(flagsOf((&App{}).Command().Flags), helpFlag, versionFlag)}
	for _, c := range cmds {
		fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
		c.setup(fs)
		for _, name := range append([]string{c.name}, c.aliases...) {
			spec.Commands = append(spec.Commands, compCommand{
				Name:    name,
				Summary: c.summary,
				Flags:   append(flagsOf(fs), helpFlag),
				Args:    argsOf(c),
			})
		}
	}
	return spec
}

// flagsOf describes fs's flags, sorted by name.
func flagsOf(fs *flag.FlagSet) []compFlag {
	var flags []compFlag
	fs.VisitAll(func(f *flag.Flag) {
		value, usage := flag.UnquoteUsage(f)
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			value = ""
		}
		flags = append(flags, compFlag{
			Name:  f.Name,
			Usage: strings.Join(strings.Fields(usage), " "),
			Value: strings.ToLower(value),
			Words: flagValues[f.Name],
			Names: flagNames[f.Name],
		})
	})
	return flags
}

// synopsisFlags are the flags of a synopsis, in this table: bracketed
// groups, and flags with their VALUE.
var synopsisFlags = regexp.MustCompile(`\[[^\]]*\]|--[a-z-]+( [A-Z]+)?`)

// argsOf reads c's positional arguments from its synopsis: NAME is what
// c.nameArg says, and "a|b|c" offers those words.
func argsOf(c command) []compArg {
	var args []compArg
	for _, word := range strings.Fields(synopsisFlags.ReplaceAllString(c.synopsis, "")) {
		a := compArg{Name: word}
		switch {
		case strings.Contains(word, "|"):
			a.Words = strings.Split(word, "|")
		case word == "NAME" && c.nameArg == backendName:
			a.Names = backendList
		case word == "NAME" && c.nameArg == serviceName:
			a.Names = serviceList
		}
		args = append(args, a)
	}
	return args
}

// flagWords are the flags as they are offered: --name.
func flagWords(flags []compFlag) []string {
	var words []string
	for _, f := range flags {
		words = append(words, "--"+f.Name)
	}
	return words
}

// valueFlagNames are the names of the flags that take a value,
// space-separated, as the bash and fish scripts look them up.
func valueFlagNames(flags []compFlag) string {
	var names []string
	for _, f := range flags {
		if f.Value != "" {
			names = append(names, f.Name)
		}
	}
	return strings.Join(names, " ")
}

// FlagsWithWords are the flags, global or not, that have words to offer,
// each once.
func (s compSpec) FlagsWithWords() []compFlag {
	var flags []compFlag
	seen := map[string]bool{}
	for _, fs := range append([][]compFlag{s.Global}, s.commandFlags()...) {
		for _, f := range fs {
			if (len(f.Words) > 0 || f.Names != nil) && !seen[f.Name] {
				seen[f.Name] = true
				flags = append(flags, f)
			}
		}
	}
	return flags
}

func (s compSpec) commandFlags() [][]compFlag {
	var all [][]compFlag
	for _, c := range s.Commands {
		all = append(all, c.Flags)
	}
	return all
}

// CommandNames are the commands, space-separated.
func (s compSpec) CommandNames() string {
	var names []string
	for _, c := range s.Commands {
		names = append(names, c.Name)
	}
	return strings.Join(names, " ")
}

// shQuote quotes s for bash and zsh.
func shQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// fishQuote quotes s for fish, whose single quotes know \' and \\.
func fishQuote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// zshEscape escapes what _arguments and _describe would read in a
// description or a message: backslash, colon and brackets.
func zshEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `:`, `\:`, `[`, `\[`, `]`, `\]`).Replace(s)
}

// bashArg is how the bash script lists an argument's completion: "@"
// and the command that lists its names, the words, or "" for none.
func bashArg(a compArg) string {
	if a.Names != nil {
		return "@" + a.Names.Command
	}
	return strings.Join(a.Words, " ")
}

// zshNames is the zsh action that offers names. It starts with a space
// so that _arguments calls it with these arguments only, not with compadd
// options inserted after the function's name.
func zshNames(n *nameList) string {
	return " _caplancectl_names " + n.Command + " " + n.What
}

// zshSpec is the _arguments spec of a flag.
func zshSpec(f compFlag) string {
	exclude := ""
	if f.Name == helpFlag.Name || f.Name == versionFlag.Name {
		exclude = "(- : *)"
	}
	if f.Value == "" {
		return exclude + "--" + f.Name + "[" + zshEscape(f.Usage) + "]"
	}
	action := " " // a message, nothing to complete
	switch {
	case f.Names != nil:
		action = zshNames(f.Names)
	case len(f.Words) > 0:
		action = "(" + strings.Join(f.Words, " ") + ")"
	}
	return exclude + "--" + f.Name + "=[" + zshEscape(f.Usage) + "]:" + zshEscape(f.Value) + ":" + action
}

// zshArgSpec is the _arguments spec of the n-th positional argument.
func zshArgSpec(n int, a compArg) string {
	action := " "
	switch {
	case a.Names != nil:
		action = zshNames(a.Names)
	case len(a.Words) > 0:
		action = "(" + strings.Join(a.Words, " ") + ")"
	}
	return fmt.Sprintf("%d:%s:%s", n+1, zshEscape(strings.ToLower(a.Name)), action)
}

var completionTemplates = template.Must(template.New("").Funcs(template.FuncMap{
	"sh":         shQuote,
	"fish":       fishQuote,
	"zsh":        zshEscape,
	"join":       strings.Join,
	"flagWords":  flagWords,
	"bashArg":    bashArg,
	"valueFlags": valueFlagNames,
	"zshSpec":    zshSpec,
	"zshArgSpec": zshArgSpec,
}).Parse(bashTemplate + zshTemplate + fishTemplate))

const completionHeader = `{{define "header"}}# {{.}} completion for caplancectl(8).
# Generated by "caplancectl completion {{.}}" from caplancectl's command table;
# do not edit. In the source tree, regenerate it with
#   go run ./caplancectl completion {{.}} > contrib/completions/{{template "file" .}}
{{end}}{{define "file"}}{{if eq . "zsh"}}_caplancectl{{else}}caplancectl.{{.}}{{end}}{{end}}`

const bashTemplate = completionHeader + `{{define "bash"}}{{template "header" "bash"}}# Install it as /usr/share/bash-completion/completions/caplancectl, or
# load it with: source <(caplancectl completion bash)

# _caplancectl_names COMMAND PROG [FLAG...]: the names of caplanced's
# backends (COMMAND list) or services (COMMAND services), from
# "PROG FLAG... COMMAND --json"; nothing when caplanced is not running.
_caplancectl_names()
{
    local cmd=$1 prog=$2 line prefix='    "name": "'
    shift 2
    [[ $prog == '~/'* ]] && prog=$HOME/${prog#'~/'}
    while IFS= read -r line; do
        [[ $line == "$prefix"* ]] || continue
        line=${line#"$prefix"}
        printf '%s\n' "${line%%\"*}"
    done < <("$prog" "$@" "$cmd" --json 2>/dev/null)
}

# _caplancectl_spec COMMAND sets its caller's flags (to offer), vflags
# (the names of those that take a value) and args (what each argument
# completes to: @COMMAND for the names COMMAND lists, words, or nothing) for
# COMMAND, or for caplancectl itself when COMMAND is empty.
_caplancectl_spec()
{
    case $1 in
    '')
        flags={{sh (join (flagWords .Global) " ")}} vflags={{sh (printf " %s " (valueFlags .Global))}} args=() ;;
{{- range .Commands}}
    {{sh .Name}})
        flags={{sh (join (flagWords .Flags) " ")}} vflags={{sh (printf " %s " (valueFlags .Flags))}} args=({{range $i, $a := .Args}}{{if $i}} {{end}}{{sh (bashArg $a)}}{{end}}) ;;
{{- end}}
    *)
        return 1 ;;
    esac
}

# _caplancectl_values FLAG VALUE [PREFIX]: the values of FLAG that start
# with VALUE, each after PREFIX. Names are listed with the global flags of
# _caplancectl's words and global.
_caplancectl_values()
{
    case $1 in
{{- range .FlagsWithWords}}
    {{sh .Name}})
{{- if .Names}}
        mapfile -t COMPREPLY < <(compgen -P "${3-}" -W "$(_caplancectl_names {{sh .Names.Command}} "${words[0]}" "${global[@]}")" -- "$2") ;;
{{- else}}
        mapfile -t COMPREPLY < <(compgen -P "${3-}" -W {{sh (join .Words " ")}} -- "$2") ;;
{{- end}}
{{- end}}
    esac
}

_caplancectl()
{
    local -a words=() global=() args=()
    local w n cur pre= flags vflags cmd= valueof= breaks=${COMP_WORDBREAKS//[^=:]/}
    local -i i cword narg=0 endflags=0
    COMPREPLY=()

    # Undo what COMP_WORDBREAKS split: --bus=unix:path=/x is one word.
    for ((i = 0; i <= COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        if ((i > 1)) && [[ -n $breaks ]] && [[ ( -n $w && -z ${w//[$breaks]/} ) ||
            ( -n ${COMP_WORDS[i-1]} && -z ${COMP_WORDS[i-1]//[$breaks]/} ) ]]; then
            words[${#words[@]}-1]+=$w
        else
            words+=("$w")
        fi
    done
    cword=${#words[@]}-1
    cur=${words[cword]}
    # Readline replaces what follows the last word break in cur: the
    # replies must not repeat what precedes it.
    if [[ -n $breaks ]]; then
        pre=${cur%"${cur##*[$breaks]}"}
    fi

    # Find the command, its arguments before the cursor, and whether the
    # cursor is on a flag's value, as caplancectl parses its flags.
    _caplancectl_spec ''
    for ((i = 1; i < cword; i++)); do
        w=${words[i]}
        if ((endflags)) || [[ $w != -?* || ( -n $cmd && $w == -[0-9]* ) ]]; then
            if [[ -n $cmd ]]; then
                narg+=1
            else
                cmd=$w endflags=0
                _caplancectl_spec "$cmd" || return 0
            fi
        elif [[ $w == -- ]]; then
            endflags=1
        else
            n=${w#-}
            n=${n#-}
            if [[ $w != *=* && $vflags == *" $n "* ]]; then
                if ((i + 1 == cword)); then
                    valueof=$n
                elif [[ -z $cmd ]]; then
                    global+=("$w" "${words[i+1]}")
                fi
                i+=1
            elif [[ -z $cmd && $vflags == *" ${n%%=*} "* ]]; then
                global+=("$w")
            fi
        fi
    done

    if [[ -n $valueof ]]; then
        _caplancectl_values "$valueof" "$cur"
    elif ((!endflags)) && [[ $cur == -?*=* ]]; then
        n=${cur%%=*}
        n=${n#-}
        n=${n#-}
        _caplancectl_values "$n" "${cur#*=}" "${cur%%=*}="
    elif ((!endflags)) && [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$flags" -- "$cur")
    elif [[ -z $cmd ]]; then
        mapfile -t COMPREPLY < <(compgen -W {{sh .CommandNames}} -- "$cur")
    else
        case ${args[narg]-} in
        @*)
            mapfile -t COMPREPLY < <(compgen -W "$(_caplancectl_names "${args[narg]#@}" "${words[0]}" "${global[@]}")" -- "$cur") ;;
        ?*)
            mapfile -t COMPREPLY < <(compgen -W "${args[narg]}" -- "$cur") ;;
        esac
    fi
    if [[ -n $pre ]]; then
        COMPREPLY=("${COMPREPLY[@]#"$pre"}")
    fi
    return 0
}

complete -F _caplancectl caplancectl
{{end}}`

const zshTemplate = `{{define "zsh"}}#compdef caplancectl
{{template "header" "zsh"}}# Install it as _caplancectl in a directory of $fpath, such as
# /usr/share/zsh/vendor-completions.

# _caplancectl_names COMMAND WHAT: the names of caplanced's backends
# (list) or services (services), from "caplancectl COMMAND --json" with the
# global flags of the command line; nothing when caplanced is not running.
_caplancectl_names() {
  local prefix='    "name": "'
  local -a lines names
  lines=(${(f)"$(${_caplancectl_prog/#\~/$HOME} "${_caplancectl_global[@]}" $1 --json 2>/dev/null)"})
  names=(${${(M)lines:#${prefix}*}#${prefix}})
  names=(${names%%\"*})
  _wanted ${2}s expl "$2 name" compadd -a names
}

_caplancectl() {
  local curcontext=$curcontext state state_descr line flag ret=1
  local _caplancectl_prog=${words[1]}
  local -a _caplancectl_global
  typeset -A opt_args

  _arguments -C \
{{- range .Global}}
    {{sh (zshSpec .)}} \
{{- end}}
    '1:command:->command' \
    '*::argument:->argument' && ret=0

  for flag in{{range .Global}}{{if .Value}} --{{.Name}}{{end}}{{end}}; do
    (( ${+opt_args[$flag]} )) && _caplancectl_global+=($flag=${(Q)opt_args[$flag]})
  done

  case $state in
  command)
    local -a commands
    commands=(
{{- range .Commands}}
      {{sh (printf "%s:%s" (zsh .Name) .Summary)}}
{{- end}}
    )
    _describe -t commands 'caplancectl command' commands && ret=0
    ;;
  argument)
    curcontext=${curcontext%:*:*}:caplancectl-$words[1]:
    case $words[1] in
{{- range .Commands}}
    {{sh .Name}})
      _arguments \
{{- range .Flags}}
        {{sh (zshSpec .)}} \
{{- end}}
{{- range $i, $a := .Args}}
        {{sh (zshArgSpec $i $a)}} \
{{- end}}
        && ret=0
      ;;
{{- end}}
    esac
    ;;
  esac
  return ret
}

if [[ $funcstack[1] == _caplancectl ]]; then
  _caplancectl "$@"
else
  compdef _caplancectl caplancectl
fi
{{end}}`

const fishTemplate = `{{define "fish"}}{{template "header" "fish"}}# Install it as /usr/share/fish/vendor_completions.d/caplancectl.fish.

# __caplancectl_parse prints where the cursor is, as caplancectl parses its
# flags: the command ("" before it) and the number of its arguments before
# the cursor, or "-" for a flag's value. With "global" it prints instead
# the global flags with their values, one a line.
function __caplancectl_parse
    set -l tokens (commandline -opc)
    set -l cmd ''
    set -l n 0
    set -l endflags 0
    set -l global
    set -l vflags {{valueFlags .Global}}
    set -l i 2
    while test $i -le (count $tokens)
        set -l w $tokens[$i]
        set i (math $i + 1)
        if test $endflags = 1; or not string match -qr -- '^-.' $w; or begin
                test -n "$cmd"; and string match -qr -- '^-[0-9]' $w
            end
            if test -n "$cmd"
                set n (math $n + 1)
            else
                set cmd $w
                set endflags 0
                set vflags (__caplancectl_value_flags $cmd)
            end
        else if test $w = --
            set endflags 1
        else
            set -l name (string replace -r -- '^--?' '' $w)
            if not string match -q -- '*=*' $w; and contains -- $name $vflags
                if test $i -gt (count $tokens)
                    set n -
                else if test -z "$cmd"
                    set -a global $w $tokens[$i]
                end
                set i (math $i + 1)
            else if test -z "$cmd"; and contains -- (string replace -r -- '=.*' '' $name) $vflags
                set -a global $w
            end
        end
    end
    if test "$argv[1]" = global
        string join \n -- $global
    else
        echo "$cmd $n"
    end
end

# __caplancectl_value_flags COMMAND prints the names of COMMAND's flags
# that take a value.
function __caplancectl_value_flags
    switch $argv[1]
{{- range .Commands}}{{if valueFlags .Flags}}
        case {{fish .Name}}
            string join \n -- {{valueFlags .Flags}}
{{- end}}{{end}}
    end
end

# __caplancectl_at COMMAND [N]: whether the cursor is on COMMAND's N-th
# argument (from 0), or anywhere after COMMAND without N.
function __caplancectl_at
    set -l state (__caplancectl_parse)
    if set -q argv[2]
        test "$state" = "$argv[1] $argv[2]"
    else
        string match -q -- "$argv[1] *" "$state"
    end
end

# __caplancectl_names COMMAND: the names of caplanced's backends (list) or
# services (services), from "caplancectl COMMAND --json" with the global
# flags of the command line; nothing when caplanced is not running.
function __caplancectl_names
    set -l prog (string replace -r -- '^~/' "$HOME/" (commandline -opc)[1])
    $prog (__caplancectl_parse global) $argv[1] --json 2>/dev/null | string replace -rf -- '^    "name": "([^"]*)".*' '$1'
end

complete -c caplancectl -f
{{range .Global}}complete -c caplancectl -n '__caplancectl_at ""' -l {{.Name}}{{if .Value}} -x{{if .Words}} -a {{fish (join .Words " ")}}{{end}}{{end}} -d {{fish .Usage}}
{{end}}
{{- range .Commands}}complete -c caplancectl -n '__caplancectl_at "" 0' -a {{.Name}} -d {{fish .Summary}}
{{end}}
{{- range $c := .Commands}}
{{range .Flags}}complete -c caplancectl -n '__caplancectl_at {{$c.Name}}' -l {{.Name}}{{if .Value}} -x{{if .Names}} -a '(__caplancectl_names {{.Names.Command}})'{{else if .Words}} -a {{fish (join .Words " ")}}{{end}}{{end}} -d {{fish .Usage}}
{{end}}
{{- range $i, $a := .Args}}{{if $a.Names}}complete -c caplancectl -n '__caplancectl_at {{$c.Name}} {{$i}}' -a '(__caplancectl_names {{$a.Names.Command}})' -d {{fish $a.Names.What}}
{{else if $a.Words}}complete -c caplancectl -n '__caplancectl_at {{$c.Name}} {{$i}}' -a {{fish (join $a.Words " ")}}
{{end}}{{end}}
{{- end}}{{end}}`
