package ingress

import (
	"context"
	"fmt"
	"log/slog"

	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"berth.dev/berth/core/kubeclient"
)

const (
	// ControllerName is the spec.controller of the IngressClasses berth's controller serves.
	ControllerName = "berth.dev/ingress"
	// DefaultClassName is the IngressClass `berth up` creates, marked default.
	DefaultClassName = "berth"
	// DefaultClassAnnotation marks the cluster's default IngressClass: Ingresses that
	// name no class belong to it.
	DefaultClassAnnotation = networkingv1.AnnotationIsDefaultIngressClass
	// legacyClassAnnotation is the class annotation Ingresses used before
	// spec.ingressClassName; it names an IngressClass here too.
	legacyClassAnnotation = "kubernetes.io/ingress.class"
)

// classes are the IngressClasses the controller serves, by name, and whether one of them
// is the default class.
type classes struct {
	ours         map[string]bool
	defaultIsOur bool
}

// ourClasses picks the classes of ControllerName out of all.
func ourClasses(all []*networkingv1.IngressClass) classes {
	c := classes{ours: map[string]bool{}}
	for _, ic := range all {
		if ic.Spec.Controller != ControllerName {
			continue
		}
		c.ours[ic.Name] = true
		if ic.Annotations[DefaultClassAnnotation] == "true" {
			c.defaultIsOur = true
		}
	}
	return c
}

// serves reports whether ing is the controller's: its spec.ingressClassName (or, without
// one, its kubernetes.io/ingress.class annotation) names a class of ControllerName, or it
// names none and a class of ControllerName is the default.
func (c classes) serves(ing *networkingv1.Ingress) bool {
	name := ""
	if ing.Spec.IngressClassName != nil {
		name = *ing.Spec.IngressClassName
	} else {
		name = ing.Annotations[legacyClassAnnotation]
	}
	if name == "" {
		return c.defaultIsOur
	}
	return c.ours[name]
}

// EnsureDefaultClass creates the IngressClass "berth" of ControllerName, marked default,
// as `berth up` does (k3s ships Traefik's the same way). A class of that name that exists
// already is left as it is: the operator's choice wins.
func EnsureDefaultClass(ctx context.Context, kube kubeclient.Interface, log *slog.Logger) error {
	ic := &networkingv1.IngressClass{
		ObjectMeta: metav1.ObjectMeta{Name: DefaultClassName, Annotations: map[string]string{DefaultClassAnnotation: "true"}},
		Spec:       networkingv1.IngressClassSpec{Controller: ControllerName},
	}
	_, err := kube.NetworkingV1().IngressClasses().Create(ctx, ic, metav1.CreateOptions{})
	switch {
	case apierrors.IsAlreadyExists(err):
		return nil
	case err != nil:
		return fmt.Errorf("create the default IngressClass %q: %w", DefaultClassName, err)
	}
	log.Info("default IngressClass created", "name", DefaultClassName, "controller", ControllerName)
	return nil
}
