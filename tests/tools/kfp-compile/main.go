// Command kfp-argo-compile turns a pipeline compiled by the KFP SDK into the Argo Workflow that the
// KFP backend would run, using the backend's own compiler (backend/src/v2/compiler/argocompiler).
//
// It reads the file the way the KFP API server reads an uploaded pipeline: YAML documents, the first
// a PipelineSpec, any further one a PlatformSpec; each parsed strictly (a field the backend does not
// know is an error, as it is when the API server stores the pipeline). It prints the Workflow as YAML
// on stdout, or the backend's error on stderr with exit status 1.
//
// abflow's tests use it to prove that the backend version docs/cluster.md names accepts the YAML
// `abflow compile` writes.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/kubeflow/pipelines/api/v2alpha1/go/pipelinespec"
	"github.com/kubeflow/pipelines/backend/src/v2/compiler/argocompiler"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"sigs.k8s.io/yaml"
)

func main() {
	pipelineRoot := flag.String("pipeline-root", "", "pipeline root the run writes artifacts under (optional)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [--pipeline-root URI] PIPELINE.yaml|-\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	raw, err := readInput(flag.Arg(0))
	if err != nil {
		fail(err)
	}
	out, err := compile(raw, *pipelineRoot)
	if err != nil {
		fail(err)
	}
	os.Stdout.Write(out)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "kfp-argo-compile:", err)
	os.Exit(1)
}

func readInput(path string) ([]byte, error) {
	if path == "-" {
		return io.ReadAll(os.Stdin)
	}
	return os.ReadFile(path)
}

// compile parses the SDK's YAML and returns the backend's Workflow as YAML.
func compile(raw []byte, pipelineRoot string) ([]byte, error) {
	docs := splitDocuments(raw)
	if len(docs) == 0 {
		return nil, errors.New("no YAML document in the input")
	}
	specJSON, err := yaml.YAMLToJSON(docs[0])
	if err != nil {
		return nil, fmt.Errorf("pipeline spec is not YAML: %w", err)
	}
	// Strict: the backend rejects a field its pipeline spec does not define.
	var spec pipelinespec.PipelineSpec
	if err := protojson.Unmarshal(specJSON, &spec); err != nil {
		return nil, fmt.Errorf("pipeline spec rejected: %w", err)
	}
	specStruct := &structpb.Struct{}
	if err := protojson.Unmarshal(specJSON, specStruct); err != nil {
		return nil, fmt.Errorf("pipeline spec is not a JSON object: %w", err)
	}
	var kubernetes *pipelinespec.SinglePlatformSpec
	for i, doc := range docs[1:] {
		platformJSON, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("document %d is not YAML: %w", i+2, err)
		}
		var platforms pipelinespec.PlatformSpec
		if err := protojson.Unmarshal(platformJSON, &platforms); err != nil {
			return nil, fmt.Errorf("platform spec (document %d) rejected: %w", i+2, err)
		}
		if k, ok := platforms.GetPlatforms()["kubernetes"]; ok {
			kubernetes = k
		}
	}
	job := &pipelinespec.PipelineJob{PipelineSpec: specStruct}
	wf, err := argocompiler.Compile(job, kubernetes, &argocompiler.Options{PipelineRoot: pipelineRoot})
	if err != nil {
		return nil, fmt.Errorf("argo compiler rejected the pipeline: %w", err)
	}
	return yaml.Marshal(wf)
}

// splitDocuments splits a multi-document YAML stream on its "---" lines, dropping empty documents.
func splitDocuments(raw []byte) [][]byte {
	var docs [][]byte
	for _, doc := range bytes.Split(append([]byte("\n"), raw...), []byte("\n---")) {
		if len(bytes.TrimSpace(doc)) > 0 {
			docs = append(docs, doc)
		}
	}
	return docs
}
